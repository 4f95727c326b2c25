"""`fastcot.LLM`: the vLLM-shaped offline entry point (load a model, generate, chat), thin loops
over one `LLMEngine`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from fastcot.engine.inputs import apply_chat_template, as_conversations, as_prompt_list
from fastcot.engine.llm_engine import LLMEngine
from fastcot.engine.sampling import SamplingParams
from fastcot.engine.sequence import RequestOutput
from fastcot.reasoning import COT_SYSTEM_PROMPT, PathConfidence, split_cot_answer


class StreamDelta(NamedTuple):
    """New text of one sample (`index`) of a request, from `LLM.generate_stream`."""

    request_id: str
    index: int
    text: str
    kind: str = "answer"  # "reasoning" (inside a thinking section) or "answer"
    finish_reason: str | None = None  # set on the sample's last delta
    confidence: PathConfidence | None = None  # on the last delta, with SamplingParams.confidence_window


class LLM:
    """Load a Llama-family model and generate with continuous batching over a paged KV cache.

    Args:
        model: a local Hugging Face directory (config.json, *.safetensors, tokenizer) or a
            built-in preset with random weights (`tiny-random`, `llama-3.1-8b-random`, ...).
        tokenizer: where the tokenizer is, if not with the model.
        quantization: None (as the checkpoint is, GPTQ/AWQ included) or "int4" (quantize on load).
        dtype: "auto", "float16", "bfloat16" or "float32".
        kv_cache_dtype: "auto" (the model's dtype) or "fp8" (float8 e4m3, scale 1).
        device: defaults to CUDA when available.
        max_model_len: longest prompt + output; defaults to the model's limit.
        max_num_seqs: most sequences running at once.
        block_size: tokens per KV-cache block.
        gpu_memory_utilization: the fraction of the GPU's memory the engine may use: the KV
            cache gets what is left of it after the weights (and anything else in use) and an
            estimate of a step's activations.
        num_kv_blocks: KV-cache size in blocks, instead of `gpu_memory_utilization` (on the
            CPU the default is enough for 8 sequences of max_model_len, at most 4096 blocks).
            A cache that cannot hold one sequence of `max_model_len` is refused (ValueError).
        enforce_eager: run decode steps eagerly instead of replaying CUDA graphs (GPU only;
            graphs are captured for padded batch sizes up to max_num_seqs at the first decode).
        seed: seeds the noise of unseeded sampling and random preset weights.
        max_num_batched_tokens: most prompt tokens per prefill step (longer prompts are split).
        enable_prefix_caching: reuse the cached KV blocks of earlier prompts' equal prefixes.
        max_logprobs: the largest `logprobs` / `prompt_logprobs` a request may ask for.
        generation_config: "auto" (a request given no SamplingParams takes temperature, top_p,
            top_k, min_p, repetition_penalty and max_tokens from the checkpoint's
            generation_config.json) or "vllm" (the library's defaults).
        thinking_delimiters: a reasoning model's thinking delimiters: None detects them from
            the tokenizer (`<think>`/`</think>` and the like, see
            `fastcot.reasoning.find_thinking_delimiters`), a `(start, end)` pair of strings sets
            them, False means none. Each must be a single token. With delimiters, outputs carry
            `reasoning_text` apart from the answer `text`, and thinking budgets apply.
        speculative_config: None, or `{"method": "ngram" | "suffix", "num_speculative_tokens": k,
            ...}` for n-gram or suffix speculative decoding of small decode batches (see
            `fastcot.engine.speculative`); greedy and seeded outputs are unchanged by it.
        tensor_parallel_size: split the model over this many devices (GPUs, or CPU processes
            with gloo) with tensor parallelism: rank 0 runs in this process, the others are
            spawned (or started by torchrun). Checkpoint directories only; decode runs eagerly
            unless FASTCOT_TP_CUDA_GRAPHS=1 (unverified on GPUs).
            Call `shutdown()` (or use the LLM as a context manager) to stop the other ranks;
            interpreter exit stops them too. See docs/tensor_parallel.md.
        gc_freeze: after setup, `gc.collect()` then `gc.freeze()`: every object alive then (the
            model, the tokenizer, imported modules, and the caller's) moves to the collector's
            permanent generation, where refcounting still frees it but cycle collection no
            longer walks it. Pass False where cyclic garbage alive at that moment must stay
            collectable.

    Every call is safe to interrupt: an exception or KeyboardInterrupt inside it, or a stream
    left unfinished (`break`, `close()`), aborts that call's requests and returns their KV
    blocks; the next call works. Not thread-safe (one `LLM` per thread, or a lock).

    Example::

        llm = fastcot.LLM("tiny-random")
        out = llm.generate(["Hello"], fastcot.SamplingParams(temperature=0, max_tokens=8))
        print(out[0].outputs[0].text)
    """

    def __init__(self, model: str, **engine_args):
        self._init(LLMEngine(model, **engine_args))

    @classmethod
    def from_model(cls, model, tokenizer, *, device, **engine_args) -> LLM:
        """An `LLM` around an already built model (see `LLMEngine.from_model`)."""
        llm = cls.__new__(cls)
        llm._init(LLMEngine.from_model(model, tokenizer, device=device, **engine_args))
        return llm

    def _init(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._counter = 0
        self._owned: set[str] = set()  # ids of this object's requests not yet handed back
        self._outbox: dict[str, list[RequestOutput]] = {}  # outputs waiting for the call that owns them

    # The engine's parts, for inspection (tests, benchmarks).
    tokenizer = property(lambda self: self.engine.tokenizer)
    config = property(lambda self: self.engine.config)
    model = property(lambda self: self.engine.model)
    device = property(lambda self: self.engine.device)
    max_model_len = property(lambda self: self.engine.max_model_len)
    thinking = property(lambda self: self.engine.thinking)
    block_manager = property(lambda self: self.engine.block_manager)
    scheduler = property(lambda self: self.engine.scheduler)
    runner = property(lambda self: self.engine.runner)
    speculator = property(lambda self: self.engine.speculator)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def shutdown(self) -> None:
        """Stop what outlives this object (tensor-parallel ranks). Idempotent."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def get_default_sampling_params(self) -> SamplingParams:
        """What a call given no SamplingParams uses (the checkpoint's generation defaults
        under `generation_config="auto"`)."""
        return self.engine.get_default_sampling_params()

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for each prompt: a str, a list of token ids, a vLLM prompt dict
        (`{"prompt": str}` or `{"prompt_token_ids": [...]}`), or a list of these.

        `sampling_params` is one `SamplingParams` for all prompts, one per prompt, or None
        (`get_default_sampling_params()`). Returns one finished `RequestOutput` per prompt,
        in order."""
        ids = self._add(prompts, sampling_params, "final_only")
        results: dict[str, RequestOutput] = {}
        bar = _Progress(len(ids), self.engine) if use_tqdm and ids else None
        try:
            for out in self._drive(ids, None if bar is None else bar.step):
                results[out.request_id] = out
                if bar is not None:
                    bar.done(1)
        except BaseException:
            self._abandon(ids)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[rid] for rid in ids]

    def generate_stream(self, prompts, sampling_params=None) -> Iterator[StreamDelta]:
        """Yield `StreamDelta(request_id, index, text, kind, finish_reason)` as text is
        generated: `kind` is "reasoning" or "answer"; each sample's last delta has its
        `finish_reason` (and may have empty text). The deltas of a sample add up to its final
        text (held back while a stop string could still remove it). Leaving the loop early
        (`break`, an exception, `close()`) aborts the requests."""
        ids = self._add(prompts, sampling_params, "delta")
        kinds: dict[tuple[str, int], str] = {}
        try:
            for out in self._drive(ids):
                rid = out.request_id
                for c in out.outputs:
                    if c.delta_reasoning_text:
                        kinds[rid, c.index] = "reasoning"
                        yield StreamDelta(rid, c.index, c.delta_reasoning_text, "reasoning")
                    if c.delta_text:
                        kinds[rid, c.index] = "answer"
                        yield StreamDelta(rid, c.index, c.delta_text, "answer")
                    if c.finished_this_step:
                        yield StreamDelta(rid, c.index, "", kinds.get((rid, c.index), "answer"), c.finish_reason,
                                          c.confidence)
        finally:
            self._abandon(ids)

    def abort(self, request_id: str) -> None:
        """Stop a request that `generate_stream` is generating (e.g. from the loop consuming
        the stream): its unfinished samples end with `finish_reason="abort"`."""
        for out in self.engine.abort_request(request_id):
            if out.request_id in self._owned:
                self._outbox.setdefault(out.request_id, []).append(out)

    def _add(self, prompts, sampling_params, output_kind: str) -> list[str]:
        """Validate every prompt first, then queue them all; returns their request ids."""
        prompts = as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.engine.get_default_sampling_params()
        params = list(sampling_params) if isinstance(sampling_params, (list, tuple)) \
            else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        for p in params:
            if not isinstance(p, SamplingParams):
                raise TypeError(f"sampling_params must be SamplingParams (or a list of them), got {type(p).__name__}")
        copies = {}  # one copy per distinct params object
        requests = []
        for prompt, p in zip(prompts, params):
            if id(p) not in copies:
                copies[id(p)] = dataclasses.replace(p, output_kind=output_kind)
            requests.append(self.engine.make_request(str(self._counter + len(requests)), prompt, copies[id(p)]))
        self._counter += len(requests)
        ids = []
        try:
            for request in requests:
                ids.append(request.request_id)
                self._owned.add(request.request_id)
                self.engine._register(request)
        except BaseException:  # interrupted halfway: none of them stays queued
            self._abandon(ids)
            raise
        return ids

    def _drive(self, ids: list[str], on_step: Callable[[], None] | None = None) -> Iterator[RequestOutput]:
        """Step the engine until each request of `ids` has finished, yielding their outputs;
        outputs of requests that other calls of this `LLM` own (a paused stream) are kept for
        them."""
        engine, outbox, owned = self.engine, self._outbox, self._owned
        live = set(ids)
        failed_steps = engine.num_failed_steps
        while live:
            if outbox:
                mine = [out for rid in list(live) for out in outbox.pop(rid, ())]
                if mine:
                    for out in mine:
                        if out.finished:
                            live.discard(out.request_id)
                            owned.discard(out.request_id)
                        yield out
                    continue
            if engine.num_failed_steps != failed_steps and any(rid not in engine.requests for rid in live):
                raise RuntimeError("the engine dropped this call's requests: a step of another call failed "
                                   "(see its exception)")
            outputs = engine.step()
            if on_step is not None:
                on_step()
            for out in outputs:
                rid = out.request_id
                if rid in live:
                    if out.finished:
                        live.discard(rid)
                        owned.discard(rid)
                    yield out
                elif rid in owned:
                    outbox.setdefault(rid, []).append(out)

    def _abandon(self, ids: list[str]) -> None:
        """Abort whatever of `ids` is still running and forget their outputs."""
        self.engine.abort_request([rid for rid in ids if rid in self.engine.requests])
        for rid in ids:
            self._owned.discard(rid)
            self._outbox.pop(rid, None)

    # ---- chat ----------------------------------------------------------------------------------

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True, *, chat_template: str | None = None,
             chat_template_kwargs: dict | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, reasoning: str | None = None) -> list[RequestOutput]:
        """Apply the chat template to `messages` (a conversation: a list of `{"role",
        "content"}` dicts; or a list of conversations), then generate. `chat_template`,
        `chat_template_kwargs` (e.g. `{"enable_thinking": False}`), `add_generation_prompt`
        and `continue_final_message` are passed to the template as in vLLM.

        `reasoning="cot"` (for models that do not think on their own): a built-in
        chain-of-thought system prompt (`fastcot.reasoning.COT_SYSTEM_PROMPT`: step by step,
        self-checking, a last line "Final answer: ...") is put before each conversation, and
        each output's `text` is the final answer, with the reasoning before it in
        `reasoning_text` (`text` stays whole when no final-answer line was written)."""
        template = dict(chat_template=chat_template, chat_template_kwargs=chat_template_kwargs,
                        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)
        prompts = [self.chat_prompt(conv, reasoning=reasoning, **template) for conv in as_conversations(messages)]
        outputs = self.generate([{"prompt_token_ids": ids} for ids in prompts], sampling_params, use_tqdm=use_tqdm)
        if reasoning == "cot":
            for out in outputs:
                for completion in out.outputs:
                    thought, answer = split_cot_answer(completion.text)
                    if answer:
                        completion.reasoning_text, completion.text = thought, answer
        return outputs

    def chat_prompt(self, conversation: list[dict], *, reasoning: str | None = None, chat_template: str | None = None,
                    chat_template_kwargs: dict | None = None, add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> list[int]:
        """The token ids of one conversation under the chat template (see `chat`)."""
        if reasoning not in (None, "cot"):
            raise ValueError(f"reasoning must be None or 'cot', got {reasoning!r}")
        conversations = as_conversations(conversation)
        if len(conversations) != 1:
            raise TypeError(f"chat_prompt takes one conversation (a list of message dicts), got {len(conversations)}")
        conversation = conversations[0]
        if reasoning == "cot":
            thinking = self.engine.thinking
            if thinking is not None:
                raise ValueError("reasoning='cot' is for models that do not think on their own; this model has "
                                 f"thinking delimiters {thinking.start!r}/{thinking.end!r}")
            conversation = _with_system_prompt(conversation, COT_SYSTEM_PROMPT)
        return apply_chat_template(self.engine.tokenizer, conversation, chat_template=chat_template,
                                   chat_template_kwargs=chat_template_kwargs,
                                   add_generation_prompt=add_generation_prompt,
                                   continue_final_message=continue_final_message)


def _with_system_prompt(conversation: list[dict], prompt: str) -> list[dict]:
    """`prompt` as the system message (before an existing system message's content)."""
    if conversation and conversation[0].get("role") == "system":
        first = dict(conversation[0], content=f"{prompt}\n\n{conversation[0]['content']}")
        return [first, *conversation[1:]]
    return [{"role": "system", "content": prompt}, *conversation]


class _Progress:
    """`generate`'s progress bar (tqdm, when installed): requests done, and output tokens with
    their rate, so a single long generation moves too. Redrawn at most twice a second."""

    INTERVAL = 0.5

    def __init__(self, total: int, engine: LLMEngine):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
            return
        self.bar = tqdm(total=total, desc="generating", unit="req", dynamic_ncols=True)
        self.engine = engine
        self.start_tokens = engine.num_generation_tokens
        self.start = self.last = time.perf_counter()

    def step(self) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.last >= self.INTERVAL:
            self.last = now
            self._postfix(now)
            self.bar.refresh()

    def _postfix(self, now: float) -> None:
        tokens = self.engine.num_generation_tokens - self.start_tokens
        rate = tokens / (now - self.start) if now > self.start else 0.0
        self.bar.set_postfix_str(f"{tokens} output tokens, {rate:.1f} tok/s", refresh=False)

    def done(self, n: int) -> None:
        if self.bar is not None:
            self._postfix(time.perf_counter())
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self._postfix(time.perf_counter())
            self.bar.close()
