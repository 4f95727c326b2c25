"""`fastcot generate` and `fastcot chat`: stream a model's replies to the terminal.

Sampling settings, in order of precedence: the flags; the checkpoint's generation_config.json
(temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, the fields vLLM's
`generation_config="auto"` reads); then, when the checkpoint recommends no sampling at all,
defaults fit for reasoning models: temperature 0.6 and top_p 0.95 (greedy decoding makes long
chains of thought loop). max_tokens defaults to 8192, capped at max_model_len. The settings in
use are printed on stderr before the first reply.
`--presence-penalty` and `--frequency-penalty` go to `SamplingParams` under those (vLLM's)
names, and only when given.

Replies go to stdout; the `[thinking]`/`[answer]` markers and, after each reply, a line with
the finish reason, the output tokens and tokens/s go to stderr. The token count is that of
the reply's text encoded again (the delimiters and special tokens a reply may hold are not
in its text), hence the "~".

Ctrl-C during a reply ends that reply: the request is aborted through the engine, which stops
it at its next step, and a chat goes on with the next message; a second Ctrl-C stops at once.
Ctrl-C while a chat waits for a message ends it.

Exit status: 0; 2 when the arguments cannot be used (a bad value, a model that cannot be
loaded, a missing package), after one line on stderr and before the weights load where it can
be known then; 130 when Ctrl-C ended the command.
"""

from __future__ import annotations

import argparse
import inspect
import re
import signal
import sys
import time

from fastcot.engine.speculative import cli_config as speculative_cli_config
from fastcot.reasoning.thinking import REASONING_EFFORT_BUDGETS

DEFAULT_MAX_TOKENS = 8192
FALLBACK_SAMPLING = {"temperature": 0.6, "top_p": 0.95}
CHECKPOINT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens")
PASSED_BY_NAME = ("presence_penalty", "frequency_penalty")
INTERRUPTED = 130


class UsageError(Exception):
    """Arguments that cannot be used; `main` prints the message as one line and exits 2."""


def add_arguments(p: argparse.ArgumentParser, *, chat: bool) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", default="tiny-random", help="a local Hugging Face directory or a preset (default tiny-random)")
    m.add_argument("--quantization", choices=["int4", "gptq", "awq"], default=None)
    m.add_argument("--dtype", default="auto")
    m.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "float16", "bfloat16"])
    m.add_argument("--device", default=None)
    m.add_argument("--max-model-len", type=int, default=None)
    m.add_argument("--num-kv-blocks", type=int, default=None)
    m.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="split the model over this many GPUs (CPU: processes); see docs/tensor_parallel.md")
    m.add_argument("--thinking-delimiters", nargs=2, metavar=("START", "END"), default=None,
                   help="a reasoning model's thinking delimiters, when its tokenizer's are not detected")
    m.add_argument("--speculative-tokens", type=int, default=0,
                   help="speculative decoding with at most this many draft tokens per step (0: off, or the "
                        "method's default with --speculative-method)")
    m.add_argument("--speculative-method", choices=("ngram", "suffix"), default=None,
                   help="where drafts come from: n-gram lookup (default) or suffix decoding over the "
                        "request's text and earlier outputs (docs/engine.md)")
    s = p.add_argument_group("sampling (unset: from generation_config.json, else temperature 0.6, top_p 0.95)")
    s.add_argument("--n", type=int, default=1, help="samples per prompt")
    s.add_argument("--max-tokens", type=int, default=None,
                   help=f"default: generation_config.json's max_new_tokens, else {DEFAULT_MAX_TOKENS}; capped at max_model_len")
    s.add_argument("--temperature", type=float, default=None, help="0: greedy")
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None, help="0: off")
    s.add_argument("--min-p", type=float, default=None)
    s.add_argument("--repetition-penalty", type=float, default=None)
    s.add_argument("--presence-penalty", type=float, default=None)
    s.add_argument("--frequency-penalty", type=float, default=None)
    s.add_argument("--stop", action="append", default=None, metavar="TEXT", help="a stop string (repeatable)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--ignore-eos", action="store_true")
    s.add_argument("--thinking-budget", type=int, default=None,
                   help="reasoning models: most thinking tokens before the answer is forced")
    s.add_argument("--reasoning-effort", choices=tuple(REASONING_EFFORT_BUDGETS), default=None,
                   help="reasoning models: a thinking budget of " + "/".join(map(str, REASONING_EFFORT_BUDGETS.values()))
                   + " tokens (low/medium/high); --thinking-budget takes precedence")
    s.add_argument("--min-thinking-tokens", type=int, default=0,
                   help="reasoning models: an earlier end of thinking is replaced by 'Wait'")
    if chat:
        p.add_argument("--system", default=None, help="a system message opening the conversation")
        p.add_argument("--prompt-file", default=None, metavar="PATH",
                       help="the first message, read from PATH ('-': all of stdin, then the chat ends)")
    else:
        prompt = p.add_mutually_exclusive_group(required=True)
        prompt.add_argument("--prompt")
        prompt.add_argument("--prompt-file", metavar="PATH", help="read the prompt from PATH ('-': stdin)")


# --- settings ----------------------------------------------------------------------------------

def sampling_kwargs(args, checkpoint: dict) -> tuple[dict, list[str]]:
    """`SamplingParams` keyword arguments from the flags and the checkpoint's recommendations
    (`fastcot.models.config.sampling_defaults`); also the names taken from the checkpoint."""
    kwargs, from_checkpoint = {}, []
    # The reasoning defaults stand in for a checkpoint that recommends no sampling at all; one
    # that recommends some keeps SamplingParams' defaults for the rest, as in vLLM.
    fallback = {} if any(checkpoint.get(k) is not None for k in CHECKPOINT_FIELDS[:-1]) else FALLBACK_SAMPLING
    for name in CHECKPOINT_FIELDS:
        value = getattr(args, name)
        if value is None and checkpoint.get(name) is not None:
            value = checkpoint[name]
            from_checkpoint.append(name)
        if value is None:
            value = fallback.get(name, DEFAULT_MAX_TOKENS if name == "max_tokens" else None)
        if value is not None:
            kwargs[name] = value
    for name in PASSED_BY_NAME:
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    kwargs.update(n=args.n, stop=args.stop, seed=args.seed, ignore_eos=args.ignore_eos,
                  thinking_budget=args.thinking_budget, min_thinking_tokens=args.min_thinking_tokens)
    if getattr(args, "reasoning_effort", None) is not None:
        kwargs["reasoning_effort"] = args.reasoning_effort
    return kwargs, from_checkpoint


def sampling_params(kwargs: dict):
    """`SamplingParams(**kwargs)`, its errors as a `UsageError` naming the flag."""
    from fastcot import SamplingParams

    accepted = inspect.signature(SamplingParams).parameters
    for name in PASSED_BY_NAME:
        if name in kwargs and name not in accepted:
            raise UsageError(f"--{name.replace('_', '-')}: this fastcot's SamplingParams has no {name!r} parameter")
    try:
        return SamplingParams(**kwargs)
    except (TypeError, ValueError) as err:
        field = re.search(r"SamplingParams\.(\w+)", str(err))
        flag = f" (--{field.group(1).replace('_', '-')})" if field else ""
        raise UsageError(f"{err}{flag}") from err


def read_prompt(path: str) -> str:
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--prompt-file: cannot read {path!r}: {err}") from err
    if not text.strip():
        raise UsageError(f"--prompt-file: {'stdin' if path == '-' else repr(path)} holds no prompt")
    return text.removesuffix("\n")


def build(args):
    """(LLM, SamplingParams) for the arguments; every check that needs no weights runs first."""
    import fastcot
    from fastcot.models.config import sampling_defaults
    from fastcot.models.loader import check_checkpoint

    try:
        config = check_checkpoint(args.model)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from err
    kwargs, from_checkpoint = sampling_kwargs(args, sampling_defaults(config))
    sampling_params(kwargs)  # the flags' errors, before the weights load
    if args.thinking_budget is not None or args.min_thinking_tokens or getattr(args, "reasoning_effort", None):
        _check_thinking_delimiters(args)
    try:
        speculative = speculative_cli_config(args.speculative_tokens, args.speculative_method)
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        llm = fastcot.LLM(args.model, quantization=args.quantization, dtype=args.dtype,
                          kv_cache_dtype=args.kv_cache_dtype, device=args.device, max_model_len=args.max_model_len,
                          num_kv_blocks=args.num_kv_blocks, speculative_config=speculative,
                          tensor_parallel_size=args.tensor_parallel_size,
                          thinking_delimiters=tuple(args.thinking_delimiters) if args.thinking_delimiters else None)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from err
    kwargs["max_tokens"] = min(kwargs["max_tokens"], llm.max_model_len)
    params = sampling_params(kwargs)
    shown = " ".join(f"{k}={kwargs[k]}" for k in CHECKPOINT_FIELDS + PASSED_BY_NAME if k in kwargs)
    source = f" ({', '.join(from_checkpoint)} from generation_config.json)" if from_checkpoint else ""
    print(f"fastcot: {shown} n={params.n}{source}", file=sys.stderr, flush=True)
    return llm, params


def _check_thinking_delimiters(args) -> None:
    """A thinking budget needs single-token thinking delimiters: find out from the tokenizer
    alone, before the weights load (the engine would refuse the first request)."""
    from fastcot.models import load_tokenizer
    from fastcot.reasoning import find_thinking_delimiters

    flag = "--thinking-budget" if args.thinking_budget is not None else \
        "--reasoning-effort" if getattr(args, "reasoning_effort", None) else "--min-thinking-tokens"
    try:
        found = find_thinking_delimiters(load_tokenizer(args.model), *(args.thinking_delimiters or ()))
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from err
    if found is None:
        raise UsageError(f"{flag} needs a reasoning model, but the tokenizer of {args.model!r} has no known thinking "
                         "delimiters; give them with --thinking-delimiters START END")
    for name, ids in (("start", found.start_ids), ("end", found.end_ids)):
        if len(ids) != 1:
            raise UsageError(f"{flag}: the thinking {name} delimiter {getattr(found, name)!r} is {len(ids)} tokens "
                             "in this tokenizer; each delimiter must be a single token (--thinking-delimiters)")


# --- one reply ---------------------------------------------------------------------------------

class _CtrlC:
    """While a reply streams: the first SIGINT only sets `requested` (the stream loop then aborts
    the request through the engine, which ends it cleanly); a second raises KeyboardInterrupt."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C keeps its usual meaning
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _Sample:
    def __init__(self):
        self.answer, self.reasoning, self.kind, self.finish_reason = [], [], "answer", None

    @property
    def text(self) -> str:
        return "".join(self.answer)


def stream_reply(llm, prompt, params, *, out=None, err=None) -> tuple[list[_Sample], bool]:
    """Generate for `prompt`, printing as it comes (n=1) or each sample when it ends (n>1),
    then a status line per sample. Returns the samples (by index) and whether Ctrl-C ended it."""
    out, err = out or sys.stdout, err or sys.stderr
    samples: dict[int, _Sample] = {}
    live = params.n == 1
    interrupted = False
    start = time.perf_counter()
    stream = llm.generate_stream(prompt, params)
    with _CtrlC() as ctrl_c:
        try:
            for delta in stream:
                if ctrl_c.requested and not interrupted:
                    interrupted = True
                    print("\n[stopping: Ctrl-C]", file=err, flush=True)
                    llm.abort(delta.request_id)
                sample = samples.setdefault(delta.index, _Sample())
                if live and delta.text and delta.kind != sample.kind:
                    print("[thinking]\n" if delta.kind == "reasoning" else "\n[answer]\n", end="", file=err, flush=True)
                if delta.text:
                    sample.kind = delta.kind
                    (sample.reasoning if delta.kind == "reasoning" else sample.answer).append(delta.text)
                    if live:
                        print(delta.text, end="", file=out, flush=True)
                if delta.finish_reason is not None:
                    sample.finish_reason = delta.finish_reason
                    if not live:
                        _print_sample(delta.index, sample, out, err)
        except KeyboardInterrupt:  # a second Ctrl-C, or one the handler could not catch
            stream.close()
            interrupted = True
    if live:
        print(file=out, flush=True)
    _print_status(llm, samples, time.perf_counter() - start, params, interrupted, err)
    return [samples[i] for i in sorted(samples)], interrupted


def _print_sample(index, sample, out, err) -> None:
    print(f"[sample {index}]", file=err, flush=True)
    if sample.reasoning:
        print("[thinking]\n" + "".join(sample.reasoning) + "\n[answer]", file=err, flush=True)
    print(sample.text, file=out, flush=True)


def _print_status(llm, samples, seconds, params, interrupted, err) -> None:
    tokens = 0
    reasons = []
    for index in sorted(samples):
        s = samples[index]
        tokens += len(llm.tokenizer.encode("".join(s.reasoning) + s.text, add_special_tokens=False))
        reason = s.finish_reason or "interrupted"
        reason = "interrupted" if reason == "abort" else reason
        reasons.append(reason if len(samples) == 1 else f"{index}: {reason}")
    rate = tokens / seconds if seconds > 0 else 0.0
    line = f"[{', '.join(reasons) or 'interrupted'} | ~{tokens} tokens in {seconds:.1f} s, ~{rate:.1f} tokens/s]"
    if "length" in " ".join(reasons):
        line += f" (max_tokens={params.max_tokens} or the context limit reached: --max-tokens, --max-model-len)"
    if interrupted and not line.startswith("[interrupted"):
        line += " [interrupted]"
    print(line, file=err, flush=True)


# --- commands ----------------------------------------------------------------------------------

def generate(args) -> int:
    prompt = args.prompt if args.prompt is not None else read_prompt(args.prompt_file)
    if not prompt:
        raise UsageError("--prompt is empty")
    llm, params = build(args)
    _, interrupted = _run_reply(llm, prompt, params)
    return INTERRUPTED if interrupted else 0


def _run_reply(llm, prompt, params, **streams):
    """`stream_reply`, with a request the engine refuses (a thinking budget for a model without
    known delimiters, a prompt longer than max_model_len) as a `UsageError`."""
    try:
        return stream_reply(llm, prompt, params, **streams)
    except (TypeError, ValueError) as err:
        hint = " (command line: --thinking-delimiters START END)" if "thinking_delimiters" in str(err) else ""
        raise UsageError(f"{err}{hint}") from err


def chat(args) -> int:
    first = read_prompt(args.prompt_file) if args.prompt_file else None
    llm, params = build(args)
    print("fastcot chat: an empty line ends the conversation; Ctrl-C stops a reply.", file=sys.stderr, flush=True)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    return chat_session(llm, params, messages, first, sys.stdin)


def chat_session(llm, params, messages: list[dict], first: str | None, stdin, *, out=None, err=None) -> int:
    """Read messages from `stdin` (one a line; an empty line or the end ends the chat) after
    `first`, replying to each; the history keeps each reply's answer."""
    err = err or sys.stderr
    while True:
        if first is not None:
            line, first = first, None
        else:
            try:
                if stdin.isatty():
                    print("> ", end="", file=err, flush=True)
                line = stdin.readline()
            except KeyboardInterrupt:
                print(file=err)
                return INTERRUPTED
            if not line.strip("\n"):
                return 0
            line = line.removesuffix("\n")
        messages.append({"role": "user", "content": line})
        samples, interrupted = _run_reply(llm, llm.chat_prompt(messages), params, out=out, err=err)
        answer = samples[0].text if samples else ""
        if answer:
            messages.append({"role": "assistant", "content": answer})
        else:
            messages.pop()
            why = "interrupted before" if interrupted else "ended without"
            print(f"[the reply {why} an answer; this turn is left out of the conversation]", file=err, flush=True)
