"""Long chain-of-thought generation through the engine: n-gram speculative decoding speed-up and
acceptance on CoT-like text, the KV memory that prefix sharing saves for n samples, and the
tokens DeepConf saves against a full vote (with its agreement) on a synthetic task.

**Speculative decoding.** Random-weight presets do not write real reasoning, so the model is
*teacher-forced*: a long synthetic chain of thought (step-by-step arithmetic and algebra with the
repetition of long reasoning: restated quantities, "Let me check", re-derivations, "Wait,"
self-corrections; procedural, deterministic from `--seed`) is tokenized with the model's
tokenizer, and after the real forward pass and the real lm_head every logits row gets its
reference next token set to +1e4 (a row's position comes from the `positions` of the step: the
last token of each sequence in a prefill, every token in a speculative verification, the one
token per sequence of a decode step). All model compute runs every step, and greedy output
follows the reference text, so the acceptance rate reflects the text's repetition. Plain greedy
decoding and ngram speculation (`k` draft tokens) run the same prompts; tokens/s counts decode
only (first token to last), and a speculative row whose tokens differ from plain decoding's is
`wrong`. A second set of rows decodes *freely* (no forcing): the random model's own greedy text,
which degenerates into repetition.

**Suffix vs n-gram.** The same teacher-forced chain of thought at batch 1, and a multi-turn
agent-like trace (`agent_turns`: each turn a separate request whose prompt holds the task and
one observation, whose output is tool calls and edits built from a few templates, files and
functions, so earlier turns' outputs repeat and only suffix decoding's cache of finished
outputs sees them), decoded plainly, with n-gram drafts (`--k`'s largest) and with suffix
decoding (`--suffix-k` tokens at most); acceptance, tokens per forward and speed-up over plain.

**Prefix sharing.** `SamplingParams(n=n, temperature=0.8, seed=0, max_tokens=G, ignore_eos=True)`
samples of one P-token prompt; the peak of KV blocks in use is compared with the bound of issue 6
(1.1 x one prompt's blocks + the blocks holding each sample's own generated tokens) and with the
unshared footprint n x blocks(P + G).

**DeepConf.** `deepconf_task.PlanModel`, a stub on the CPU whose answers and confidences are
known, votes n paths plainly and with `self_consistency(..., confidence=...)` (offline, online,
online without the consensus stop, online eta 90); rows report tokens generated and saved and
whether the answers agree (see benchmarks/README.md).

    python benchmarks/bench_reasoning.py                 # GPU: llama-3.1-8b-random, batch 1 and 4, k 2/4/8
    python benchmarks/bench_reasoning.py --quick         # GPU: batch 1 only, shorter text
    python benchmarks/bench_reasoning.py --quantization int4
    python benchmarks/bench_reasoning.py --smoke --out-dir /tmp/bench   # tiny-random on CPU, seconds
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import deepconf_task

FAMILY = "reasoning"
KI = 1024
BIG = 1e4  # added logit of the reference token: random logits are O(10), so greedy picks it
PREFIX_BOUND = 1.1
SPEEDUP_TARGET = 1.5
GPU = {"model": "llama-3.1-8b-random", "prompt": 256, "generate": 2048, "batch": "1,4", "k": "2,4,8",
       "free_k": "4", "n": "8,32", "prefix_prompt": 4 * KI, "prefix_generate": 128, "repeats": 1,
       "warmup_tokens": 32, "suffix_k": 16, "agent_turns": 24, "agent_tokens": 0}
QUICK = GPU | {"generate": 1024, "batch": "1", "agent_turns": 12}
SMOKE = {"model": "tiny-random", "prompt": 48, "generate": 128, "batch": "1", "k": "2,4", "free_k": "4", "n": "8,32",
         "prefix_prompt": 100, "prefix_generate": 8, "repeats": 1, "warmup_tokens": 4, "suffix_k": 16,
         "agent_turns": 3, "agent_tokens": 192}
BLOCK_SIZE = 16

ROW_KEYS = ("section", "text", "batch", "method", "k", "status", "reason", "prompt_tokens", "generated_tokens",
            "decode_s", "tokens_per_s", "speedup", "spec_steps", "proposed", "accepted", "acceptance_rate",
            "mean_accepted_per_step", "tokens_per_forward", "forwards", "matches_plain", "reference_match",
            "n", "generate", "block_size", "prompt_blocks", "own_blocks", "bound_blocks", "peak_blocks",
            "unshared_blocks", "ratio_vs_bound", "ratio_vs_unshared", "bound_status",
            "mode", "eta", "seed", "window", "answer", "full_answer", "agrees", "correct", "full_correct",
            "full_tokens", "saved_tokens", "saved_fraction", "estimated_saved", "threshold", "voters", "stopped_low")


def _ints(text: str) -> list[int]:
    return [int(t[:-1]) * KI if t.lower().endswith("k") else int(t) for t in str(text).split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset or Hugging Face directory (GPU default llama-3.1-8b-random)")
    p.add_argument("--quantization", choices=("int4",), default=None, help="quantize the weights on load")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32 (CPU: auto is float32)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens of the speculative rows (default 256)")
    p.add_argument("--generate", type=int, default=None, help="tokens each speculative-row request generates "
                   "(GPU default 2048)")
    p.add_argument("--batch", default=None, help="comma list of decode batch sizes (GPU default 1,4)")
    p.add_argument("--k", default=None, help="comma list of num_speculative_tokens (default 2,4,8)")
    p.add_argument("--free-k", default=None, help="comma list of k for the free (not teacher-forced) rows (default 4)")
    p.add_argument("--n", default=None, help="comma list of sample counts for prefix sharing (default 8,32)")
    p.add_argument("--prefix-prompt", type=int, default=None, help="prompt tokens of the prefix rows (default 4096)")
    p.add_argument("--prefix-generate", type=int, default=None, help="tokens per sample in the prefix rows (default 128)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per speculative row; median (default 1)")
    p.add_argument("--no-free", action="store_true", help="skip the free (not teacher-forced) rows")
    p.add_argument("--deepconf-n", type=int, default=None, help="paths per DeepConf vote (default 64; smoke 24)")
    p.add_argument("--deepconf-seeds", default=None, help="comma list of seeds of the DeepConf rows (default 0,1; "
                   "smoke 0)")
    p.add_argument("--no-deepconf", action="store_true", help="skip the DeepConf rows")
    p.add_argument("--suffix-k", type=int, default=None, help="most draft tokens of suffix decoding (default 16)")
    p.add_argument("--agent-turns", type=int, default=None, help="turns of the agent-like trace (GPU default 24)")
    p.add_argument("--no-suffix", action="store_true", help="skip the suffix vs n-gram rows")
    p.add_argument("--quick", action="store_true", help="GPU subset: batch 1, 1024 generated tokens")
    p.add_argument("--smoke", action="store_true", help="tiny-random on CPU, seconds; speed targets not judged")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--out-dir", type=Path, default=common.DEFAULT_OUT_DIR, help="where the JSON/CSV go")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run_plan(args, tiny: bool) -> dict:
    base = SMOKE if tiny else QUICK if args.quick else GPU
    pick = {k: getattr(args, k) if getattr(args, k, None) is not None else base[k] for k in base}
    plan = pick | {"batch": _ints(pick["batch"]), "k": _ints(pick["k"]), "free_k": _ints(pick["free_k"]),
                   "n": _ints(pick["n"]),
                   "free": not args.no_free, "suffix": not args.no_suffix}
    if plan["generate"] < 8 or plan["prompt"] < 8 or plan["prefix_prompt"] < 1 or plan["prefix_generate"] < 1:
        raise SystemExit("--generate and --prompt must be >= 8, --prefix-prompt and --prefix-generate >= 1")
    if not plan["k"] or min(plan["k"]) < 1 or not plan["batch"] or min(plan["batch"]) < 1:
        raise SystemExit("--k and --batch need positive values")
    if plan["repeats"] < 1:
        raise SystemExit("--repeats must be >= 1")
    return plan


# ---------------------------------------------------------------------------------------------
# The synthetic chain of thought


NAMES = ("Alice", "Ben", "Chen", "Dana", "Eve", "Farid", "Grace", "Hugo")
ITEMS = ("apples", "books", "marbles", "tickets", "pencils", "boxes", "stamps", "coins")


def _word_problem(rng: random.Random, i: int) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(12, 97), rng.randint(3, 19), rng.randint(2, 9)
    bc = b * c
    s1 = a + bc
    d = rng.randint(5, s1 - 1)
    ans = s1 - d
    out = [(f"Problem {i}: {name} has {a} {item}. {name} buys {b} packs with {c} {item} in each pack, then gives "
            f"away {d} {item}. How many {item} does {name} have now?\n"),
           "Let me think step by step.\n",
           f"First, {name} starts with {a} {item}.\n",
           f"Each pack has {c} {item}, and there are {b} packs, so the packs hold {b} x {c} = {bc} {item}.\n",
           f"So now {name} has {a} + {bc} = {s1} {item}.\n"]
    if rng.random() < 0.5:
        wrong = ans + rng.choice((-10, -1, 1, 10))
        out += [f"Then {name} gives away {d} {item}, so {name} has {s1} - {d} = {wrong} {item}.\n",
                f"Wait, let me check that subtraction. {s1} - {d} = {ans}, not {wrong}. Let me redo it.\n"]
    out += [f"Then {name} gives away {d} {item}, so {name} has {s1} - {d} = {ans} {item}.\n",
            f"Let me check: {b} x {c} = {bc}. Yes, {b} x {c} = {bc}.\n",
            f"Let me check: {a} + {bc} = {s1}. Yes, {a} + {bc} = {s1}.\n",
            f"Let me check: {s1} - {d} = {ans}. Yes, {s1} - {d} = {ans}.\n"]
    if rng.random() < 0.6:
        out += [(f"Wait, let me re-read the problem. {name} has {a} {item}, buys {b} packs of {c}, and gives away "
                 f"{d}. Yes, that is what I used.\n"),
                f"So {name} has {a} + {b} x {c} - {d} = {a} + {bc} - {d} = {s1} - {d} = {ans} {item}.\n"]
    out.append(f"So the answer is {ans} {item}.\n\nThe answer is {ans}.\n\n")
    return "".join(out)


def _equation(rng: random.Random, i: int) -> str:
    p, x, q = rng.randint(2, 12), rng.randint(2, 30), rng.randint(1, 60)
    px, r = p * x, p * x + q
    out = [f"Problem {i}: Solve {p}x + {q} = {r}.\n",
           "Let me think step by step.\n",
           f"We have {p}x + {q} = {r}.\n",
           f"Subtract {q} from both sides: {p}x = {r} - {q} = {px}.\n"]
    if rng.random() < 0.5:
        out += [f"Divide both sides by {p}: x = {px} / {p} = {x + 1}.\n",
                f"Wait, {p} x {x + 1} = {p * (x + 1)}, not {px}. Let me redo the division.\n"]
    out += [f"Divide both sides by {p}: x = {px} / {p} = {x}.\n",
            f"Let me check: {p} x {x} + {q} = {px} + {q} = {r}. Yes, that matches.\n",
            f"Let me check again: {p} x {x} = {px}, and {px} + {q} = {r}. Yes.\n",
            f"So x = {x}.\n\nThe answer is {x}.\n\n"]
    return "".join(out)


def cot_text(seed: int, min_chars: int) -> str:
    """Procedural step-by-step reasoning, deterministic from `seed`, at least `min_chars` long."""
    rng = random.Random(seed)
    parts = ["Solve each problem. Reason step by step, check every step, and give the final answer.\n\n"]
    i = total = 0
    while total < min_chars:
        i += 1
        parts.append((_word_problem if rng.random() < 0.65 else _equation)(rng, i))
        total += len(parts[-1])
    return "".join(parts)


def reference_ids(tokenizer, seed: int, n_tokens: int) -> list[int]:
    """At least `n_tokens` token ids of `cot_text` (no special tokens)."""
    chars = 4 * n_tokens
    while True:
        ids = tokenizer.encode(cot_text(seed, chars), add_special_tokens=False)
        if len(ids) >= n_tokens:
            return ids
        chars *= 2


# ---------------------------------------------------------------------------------------------
# Teacher forcing and engine probes


class TeacherForcing:
    """Wraps a model's forward (to record each step's positions and metadata) and its
    `compute_logits` (to set the reference's next token to +BIG on every row). Only tensor ops
    with the step's shapes, so a decode step captured in a CUDA graph is forced too."""

    def __init__(self, model, ref_ids: list[int], device):
        self.model = model
        self.ref = torch.tensor(ref_ids, dtype=torch.int64, device=device)
        self.positions = self.metadata = None
        self.active = False

    def __enter__(self):
        model, forward, logits_fn = self.model, self.model.forward, self.model.compute_logits

        def forward_(input_ids, positions, kv_caches, metadata):
            self.positions, self.metadata = positions, metadata
            return forward(input_ids, positions, kv_caches, metadata)

        def compute_logits_(hidden):
            logits = logits_fn(hidden)
            positions = self.positions
            if positions.shape[0] != hidden.shape[0]:  # a prefill: the last token of each sequence
                positions = positions[self.metadata.cu_seqlens_q[1:].long() - 1]
            target = self.ref[(positions + 1).clamp(max=self.ref.shape[0] - 1)]
            return logits.scatter(1, target[:, None], BIG)

        model.forward, model.compute_logits = forward_, compute_logits_
        self.active = True
        return self

    def __exit__(self, *exc):
        del self.model.forward, self.model.compute_logits  # back to the class's methods
        self.active = False


class Probe:
    """Counts an engine's decode forwards (plain steps and verifications) and the peak of KV
    blocks in use (after each schedule, and before each forward: drafts take blocks late)."""

    def __init__(self, llm):
        self.forwards = 0
        self.peak = 0
        bm, scheduler, runner = llm.block_manager, llm.scheduler, llm.runner
        schedule, step, verify = scheduler.schedule, runner.step, runner.verify

        def used():
            self.peak = max(self.peak, bm.num_blocks - bm.num_free_blocks)

        def schedule_(*a, **kw):
            out = schedule(*a, **kw)
            used()
            return out

        def step_(batch, *a, **kw):
            used()
            self.forwards += not batch.is_prefill
            return step(batch, *a, **kw)

        def verify_(batch, *a, **kw):
            used()
            self.forwards += 1
            return verify(batch, *a, **kw)

        scheduler.schedule, runner.step, runner.verify = schedule_, step_, verify_

    def reset(self):
        self.forwards = self.peak = 0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Measurements


class Bench:
    def __init__(self, args, plan, fastcot, device):
        self.args, self.plan, self.fastcot, self.device = args, plan, fastcot, device
        from fastcot.models import load_model, load_tokenizer

        t0 = time.perf_counter()
        self.model = load_model(plan["model"], dtype=args.dtype, device=device, quantization=args.quantization,
                                seed=args.seed)
        self.tokenizer = load_tokenizer(plan["model"])
        self.load_s = time.perf_counter() - t0
        self.config = self.model.config
        need = plan["prompt"] + plan["generate"] + 2 * plan["warmup_tokens"] + 64
        self.ref = reference_ids(self.tokenizer, args.seed, need)
        vocab = self.config.vocab_size
        if max(self.ref) >= vocab:
            raise SystemExit(f"the tokenizer gives ids >= the model's vocabulary ({vocab})")
        # Distinct first tokens per request so that no two requests share prefix-cache blocks.
        self.markers = sorted(set(self.ref))

    def engine(self, *, spec_k: int | None, max_num_seqs: int, num_blocks: int, max_model_len: int,
               method: str = "ngram"):
        spec = None if spec_k is None else {"method": "ngram", "num_speculative_tokens": spec_k,
                                            "prompt_lookup_max": 4, "prompt_lookup_min": 2, "max_batch_size": 8}
        if spec_k is not None and method == "suffix":
            spec = {"method": "suffix", "num_speculative_tokens": spec_k, "max_batch_size": 8}
        return self.fastcot.LLM.from_model(self.model, self.tokenizer, device=self.device, num_kv_blocks=num_blocks,
                                           block_size=BLOCK_SIZE, max_model_len=max_model_len,
                                           max_num_seqs=max_num_seqs, seed=self.args.seed, thinking_delimiters=False,
                                           speculative_config=spec)

    def prompts(self, batch: int, offset: int) -> list[list[int]]:
        out = []
        for i in range(batch):
            ids = list(self.ref[: self.plan["prompt"]])
            ids[0] = self.markers[(offset + i) % len(self.markers)]
            out.append(ids)
        return out

    def run_decode(self, *, batch: int, k: int | None, forced: bool, method: str = "ngram") -> dict:
        """Generate `plan['generate']` greedy tokens for `batch` prompts (after a warm-up run),
        `repeats` times; tokens of the last run, median tokens/s."""
        plan, fc = self.plan, self.fastcot
        gen = plan["generate"]
        max_len = plan["prompt"] + gen + 8
        blocks = (batch + 1) * (-(-max_len // BLOCK_SIZE) + 1) + 8
        llm = self.engine(spec_k=k, max_num_seqs=max(batch, 1), num_blocks=blocks, max_model_len=max_len,
                          method=method)
        probe = Probe(llm)
        params = fc.SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)
        warm = fc.SamplingParams(temperature=0, max_tokens=plan["warmup_tokens"], ignore_eos=True)
        forcing = TeacherForcing(self.model, self.ref, self.device) if forced else None
        runs = []
        try:
            if forcing:
                forcing.__enter__()
            # Warm-up: CUDA graphs, autotuning, the prefill and verification shapes.
            llm.generate(self.prompts(batch, 1000), warm, use_tqdm=False)
            for r in range(plan["repeats"]):
                if llm.speculator is not None:
                    sp = llm.speculator
                    sp.num_steps = sp.num_proposed = sp.num_accepted = 0
                probe.reset()
                _sync(self.device)
                outs = llm.generate(self.prompts(batch, 10 * r), params, use_tqdm=False)
                _sync(self.device)
                first = min(o.metrics.first_token_time for o in outs)
                last = max(o.metrics.finish_time for o in outs)
                tokens = [list(o.outputs[0].token_ids) for o in outs]
                decoded = sum(len(t) - 1 for t in tokens)
                runs.append({"decode_s": last - first, "tokens_per_s": decoded / (last - first), "tokens": tokens,
                             "forwards": probe.forwards, "decoded": decoded})
        finally:
            if forcing:
                forcing.__exit__()
        median = statistics.median(r["tokens_per_s"] for r in runs)
        best = min(runs, key=lambda r: abs(r["tokens_per_s"] - median))
        row = {"tokens_per_s": median, "decode_s": best["decode_s"], "forwards": best["forwards"],
               "generated_tokens": sum(len(t) for t in best["tokens"]), "tokens": best["tokens"],
               "tokens_per_forward": best["decoded"] / best["forwards"] / batch if best["forwards"] else None,
               "runs_tokens_per_s": [r["tokens_per_s"] for r in runs]}
        if any(r["tokens"] != runs[0]["tokens"] for r in runs):
            row["reason"] = "repeated runs gave different tokens"
        sp = llm.speculator
        if sp is not None:
            row |= {"spec_steps": sp.num_steps, "proposed": sp.num_proposed, "accepted": sp.num_accepted,
                    "acceptance_rate": sp.acceptance_rate,
                    "mean_accepted_per_step": sp.num_accepted / sp.num_steps / batch if sp.num_steps else None}
        if forced:
            want = self.ref[plan["prompt"]: plan["prompt"] + gen]
            hits = sum(a == b for t in best["tokens"] for a, b in zip(t, want))
            row["reference_match"] = hits / max(1, sum(len(t) for t in best["tokens"]))
        del llm, probe
        common.free_memory()
        return row

    def speculative_rows(self) -> list[dict]:
        plan = self.plan
        texts = [("cot", True)] + ([("free", False)] if plan["free"] else [])
        rows = []
        for text, forced in texts:
            for batch in plan["batch"] if forced else plan["batch"][:1]:
                base = None
                for k in [None, *(plan["k"] if forced else plan["free_k"])]:
                    label = "plain" if k is None else f"ngram k={k}"
                    print(f"{text} B={batch} {label}", file=sys.stderr, flush=True)
                    row = {key: None for key in ROW_KEYS} | {
                        "section": "speculative", "text": text, "batch": batch, "method": "plain" if k is None
                        else "ngram", "k": k, "status": "ok", "prompt_tokens": plan["prompt"]}
                    try:
                        got = self.run_decode(batch=batch, k=k, forced=forced)
                    except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
                        row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
                        print(f"ERROR {text} B={batch} {label}: {row['reason']}", file=sys.stderr)
                        rows.append(row)
                        if k is None:
                            break
                        continue
                    tokens = got.pop("tokens")
                    got.pop("runs_tokens_per_s")
                    row |= got
                    if forced and row["reference_match"] != 1.0:
                        row |= {"status": "wrong", "reason": f"teacher forcing missed: {row['reference_match']:.3f} "
                                "of the tokens follow the reference"}
                    if k is None:
                        base = (tokens, row["tokens_per_s"])
                    else:
                        against_plain(row, tokens, base)
                    rows.append(row)
        return rows

    def prefix_rows(self) -> list[dict]:
        plan, fc, bs = self.plan, self.fastcot, BLOCK_SIZE
        p, g = plan["prefix_prompt"], plan["prefix_generate"]
        prompt = reference_ids(self.tokenizer, self.args.seed + 1, p)[:p]
        prompt_blocks = -(-p // bs)
        own_each = (p + g - 1) // bs - p // bs + 1  # blocks holding tokens p .. p+g-1
        rows = []
        for n in plan["n"]:
            print(f"prefix sharing n={n}", file=sys.stderr, flush=True)
            unshared = n * -(-(p + g) // bs)
            bound = PREFIX_BOUND * prompt_blocks + n * own_each
            row = {key: None for key in ROW_KEYS} | {
                "section": "prefix_sharing", "text": "cot", "batch": 1, "method": "plain", "status": "ok", "n": n,
                "prompt_tokens": p, "generate": g, "block_size": bs, "prompt_blocks": prompt_blocks,
                "own_blocks": n * own_each, "bound_blocks": bound, "unshared_blocks": unshared}
            try:
                # Room for the unshared footprint, so an engine that did not share would show it.
                llm = self.engine(spec_k=None, max_num_seqs=n, num_blocks=unshared + n + 8, max_model_len=p + g + 8)
                probe = Probe(llm)
                params = fc.SamplingParams(n=n, temperature=0.8, seed=0, max_tokens=g, ignore_eos=True)
                out = llm.generate([prompt], params, use_tqdm=False)[0]
                lens = [len(o.token_ids) for o in out.outputs]
                if len(lens) != n or any(n_ != g for n_ in lens):
                    raise RuntimeError(f"expected {n} samples of {g} tokens, got {lens}")
                peak = probe.peak
                row |= {"peak_blocks": peak, "generated_tokens": sum(lens), "ratio_vs_bound": peak / bound,
                        "ratio_vs_unshared": peak / unshared, "bound_status": "PASS" if peak <= bound else "FAIL"}
                del llm, probe
            except Exception as exc:  # noqa: BLE001
                row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300], "bound_status": "n/a"}
                print(f"ERROR prefix n={n}: {row['reason']}", file=sys.stderr)
            common.free_memory()
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------
# Suffix decoding vs n-gram: the chain of thought, and a multi-turn agent-like trace


FILES = ("src/parser.py", "src/cache.py", "src/http.py", "tests/test_parser.py")
FUNCS = ("parse_header", "read_chunk", "merge_rows", "retry_request", "load_config")


def _code(func: str, delta: int) -> str:
    return (f"def {func}(data, limit=None):\n    if limit is None:\n        limit = len(data)\n"
            f"    return data[:limit + {delta}]\n")


def agent_turns(seed: int, turns: int) -> list[tuple[str, str]]:
    """(prompt, output) texts of a synthetic coding-agent session, deterministic from `seed`:
    each turn reads a file, edits a function and reruns the tests, through tool calls in a
    fixed JSON form over a few files and functions, so later outputs repeat earlier ones. A
    prompt holds the task and one observation only (as agents that summarize their history)."""
    rng = random.Random(seed)
    out = []
    for i in range(turns):
        path, func, test = rng.choice(FILES), rng.choice(FUNCS), rng.choice(FUNCS)
        old, new = rng.randint(0, 3), rng.randint(0, 3)
        prompt = (f"You are a coding agent. Call tools as JSON. Task {i}: the test test_{test} fails.\n"
                  f"Observation: {path} contains\n{_code(func, old)}\n")
        output = (f"Thought: test_{test} fails, and {func} in {path} looks wrong. Let me read {path} first.\n"
                  f'Action: {{"tool": "read_file", "arguments": {{"path": "{path}"}}}}\n'
                  f"Thought: {func} returns one element too many. Let me fix it.\n"
                  f'Action: {{"tool": "edit_file", "arguments": {{"path": "{path}", "old": "{_code(func, old)}", '
                  f'"new": "{_code(func, new)}"}}}}\n'
                  f'Action: {{"tool": "run_tests", "arguments": {{"path": "tests/test_parser.py", "k": "test_{test}"}}}}\n'
                  f"Thought: the tests pass now. The fix is done.\n")
        out.append((prompt, output))
    return out


def run_trace(bench: Bench, turns: list[tuple[list[int], list[int]]], *, k: int | None, method: str) -> dict:
    """Decode each turn (a separate request, batch 1, teacher-forced onto its output) in order;
    decode time summed over the turns."""
    fc = bench.fastcot
    max_len = max(len(p) + len(o) for p, o in turns) + 8
    llm = bench.engine(spec_k=k, method=method, max_num_seqs=1, num_blocks=2 * (-(-max_len // BLOCK_SIZE) + 1) + 8,
                       max_model_len=max_len)
    probe = Probe(llm)
    tokens, decode_s, decoded = [], 0.0, 0
    with TeacherForcing(bench.model, bench.ref, bench.device) as forcing:
        warm = fc.SamplingParams(temperature=0, max_tokens=bench.plan["warmup_tokens"], ignore_eos=True)
        llm.generate([bench.ref[:16]], warm, use_tqdm=False)  # CUDA graphs, shapes (not agent text)
        if llm.speculator is not None:
            sp = llm.speculator
            sp.num_steps = sp.num_proposed = sp.num_accepted = 0
        probe.reset()
        for prompt, output in turns:
            forcing.ref = torch.tensor(prompt + output + output[-1:], dtype=torch.int64, device=bench.device)
            params = fc.SamplingParams(temperature=0, max_tokens=len(output), ignore_eos=True)
            _sync(bench.device)
            out = llm.generate([prompt], params, use_tqdm=False)[0]
            _sync(bench.device)
            decode_s += out.metrics.finish_time - out.metrics.first_token_time
            tokens.append(list(out.outputs[0].token_ids))
            decoded += len(tokens[-1]) - 1
    row = {"tokens_per_s": decoded / decode_s, "decode_s": decode_s, "forwards": probe.forwards,
           "generated_tokens": sum(map(len, tokens)), "tokens": tokens,
           "tokens_per_forward": decoded / probe.forwards if probe.forwards else None,
           "reference_match": sum(a == b for t, (_, o) in zip(tokens, turns) for a, b in zip(t, o))
           / max(1, sum(map(len, tokens)))}
    sp = llm.speculator
    if sp is not None:
        row |= {"spec_steps": sp.num_steps, "proposed": sp.num_proposed, "accepted": sp.num_accepted,
                "acceptance_rate": sp.acceptance_rate,
                "mean_accepted_per_step": sp.num_accepted / sp.num_steps if sp.num_steps else None}
    del llm, probe
    common.free_memory()
    return row


def suffix_rows(bench: Bench) -> list[dict]:
    """Plain, n-gram (the largest --k) and suffix decoding on the CoT text and the agent trace."""
    plan = bench.plan
    encode = bench.tokenizer.encode
    cut = plan["agent_tokens"] or None  # the smoke run keeps each output's beginning
    turns = [(encode(p, add_special_tokens=False), encode(o, add_special_tokens=False)[:cut])
             for p, o in agent_turns(bench.args.seed, plan["agent_turns"])]
    rows = []
    for text in ("cot", "agent"):
        base = None
        for method, k in (("plain", None), ("ngram", max(plan["k"])), ("suffix", plan["suffix_k"])):
            print(f"suffix vs ngram: {text} {method} k={k}", file=sys.stderr, flush=True)
            row = {key: None for key in ROW_KEYS} | {"section": "suffix", "text": text, "batch": 1, "method": method,
                                                     "k": k, "status": "ok"}
            try:
                if text == "cot":
                    got = bench.run_decode(batch=1, k=k, forced=True, method=method if k else "ngram")
                    got.pop("runs_tokens_per_s")
                    row["prompt_tokens"] = plan["prompt"]
                else:
                    got = run_trace(bench, turns, k=k, method=method)
                    row["prompt_tokens"] = sum(len(p) for p, _ in turns)
            except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
                row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
                print(f"ERROR suffix {text} {method}: {row['reason']}", file=sys.stderr)
                rows.append(row)
                continue
            tokens = got.pop("tokens")
            row |= got
            if row["reference_match"] != 1.0:
                row |= {"status": "wrong", "reason": f"teacher forcing missed: {row['reference_match']:.3f}"}
            if k is None:
                base = (tokens, row["tokens_per_s"])
            elif base is not None:
                against_plain(row, tokens, base)
            rows.append(row)
    return rows


def against_plain(row: dict, tokens: list, base: tuple) -> None:
    """A speculative row next to the plain row's (tokens, tokens/s): equal tokens, speed-up."""
    row["matches_plain"] = tokens == base[0]
    row["speedup"] = row["tokens_per_s"] / base[1]
    if not row["matches_plain"]:
        row |= {"status": "wrong", "reason": "speculative tokens differ from plain greedy"}


def format_suffix(rows: list[dict]) -> str:
    fmt = common.fmt
    table = []
    for r in rows:
        if r["section"] != "suffix":
            continue
        cells = [r["text"], r["method"] if r["k"] is None else f"{r['method']} k={r['k']}"]
        if r["status"] == "error":
            table.append(cells + ["error"] + [""] * 6)
            continue
        mark = "!" if r["status"] == "wrong" else ""
        cells += [fmt(r["tokens_per_s"], ".1f") + mark, fmt(r["speedup"], ".2f"), fmt(r["acceptance_rate"], ".2f"),
                  fmt(r["mean_accepted_per_step"], ".2f"), fmt(r["tokens_per_forward"], ".2f"),
                  "-" if r["matches_plain"] is None else "yes" if r["matches_plain"] else "NO",
                  str(r["generated_tokens"])]
        table.append(cells)
    headers = ["text", "method", "tok/s", "x plain", "accept", "acc/step", "tok/fwd", "= plain", "tokens"]
    return common.format_table(headers, table, groups=[2])


# ---------------------------------------------------------------------------------------------
# Targets and tables


def judge_targets(rows: list[dict], *, cpu: bool) -> dict:
    """`{"judged": true, "results": [...]}` in the other benchmarks' shape: the speed-up target
    (status "not judged" on a CPU) and one prefix-sharing bound per n (judged everywhere)."""
    spec = [r for r in rows if r["section"] == "speculative" and r["text"] == "cot" and r["batch"] == 1
            and r["method"] == "ngram"]
    ok = [r for r in spec if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    speed = {"target": "spec speed-up at batch 1 (teacher-forced CoT text, best k)", "batch": 1,
             "k": None if best is None else best["k"], "need": f">= {SPEEDUP_TARGET}x",
             "value": None if best is None else best["speedup"],
             "acceptance_rate": None if best is None else best["acceptance_rate"]}
    if cpu:
        speed |= {"status": "not judged", "why": common.CPU_LABEL}
    elif best is None or len(ok) < len(spec):
        speed |= {"status": "FAIL" if spec else "n/a",
                  "why": "a speculative row is wrong or failed" if spec else "no batch-1 speculative rows"}
    else:
        speed["status"] = "PASS" if best["speedup"] >= SPEEDUP_TARGET else "FAIL"
    results = [speed]
    for r in rows:
        if r["section"] == "prefix_sharing":
            results.append({"target": f"prefix sharing peak KV blocks (P={r['prompt_tokens']}, G={r['generate']})",
                            "n": r["n"], "need": f"<= {PREFIX_BOUND} x prompt + own = {common.fmt(r['bound_blocks'])}",
                            "value": r["peak_blocks"], "bound": r["bound_blocks"],
                            "status": r["bound_status"] or "n/a"})
    return {"judged": True, "results": results}


def format_spec(rows: list[dict]) -> str:
    fmt = common.fmt
    table = []
    for r in rows:
        if r["section"] != "speculative":
            continue
        cells = [r["text"], str(r["batch"]), "plain" if r["k"] is None else f"ngram k={r['k']}"]
        if r["status"] == "error":
            table.append(cells + ["error"] + [""] * 6)
            continue
        mark = "!" if r["status"] == "wrong" else ""
        cells += [fmt(r["tokens_per_s"], ".1f") + mark, fmt(r["speedup"], ".2f"), fmt(r["acceptance_rate"], ".2f"),
                  fmt(r["mean_accepted_per_step"], ".2f"), fmt(r["tokens_per_forward"], ".2f"),
                  "-" if r["matches_plain"] is None else "yes" if r["matches_plain"] else "NO"]
        cells.append(str(r["generated_tokens"]))
        table.append(cells)
    headers = ["text", "B", "method", "tok/s", "x plain", "accept", "acc/step", "tok/fwd", "= plain", "tokens"]
    return common.format_table(headers, table, groups=[3])


def format_prefix(rows: list[dict]) -> str:
    fmt = common.fmt
    table = []
    for r in rows:
        if r["section"] != "prefix_sharing":
            continue
        table.append([f"n={r['n']}", str(r["prompt_tokens"]), str(r["generate"]), str(r["prompt_blocks"]),
                      str(r["own_blocks"]), fmt(r["bound_blocks"], ".1f"), fmt(r["peak_blocks"], "d"),
                      fmt(r["ratio_vs_bound"], ".3f"), str(r["unshared_blocks"]), fmt(r["ratio_vs_unshared"], ".3f"),
                      r["bound_status"] if r["status"] != "error" else "error"])
    headers = ["samples", "P", "G", "prompt blk", "own blk", "bound", "peak", "peak/bound", "unshared",
               "peak/unshared", "bound"]
    return common.format_table(headers, table)


def _yes(value) -> str:
    return "yes" if value else "no"


def format_deepconf(rows: list[dict]) -> str:
    fmt = common.fmt
    table = []
    for r in rows:
        if r["section"] != "deepconf":
            continue
        if r["status"] == "error":
            table.append([r["text"], str(r["seed"]), r["method"], "error"] + [""] * 7)
            continue
        correct = f"{_yes(r['correct'])} / {_yes(r['full_correct'])}"
        table.append([r["text"], str(r["seed"]), r["method"] + ("!" if r["status"] == "wrong" else ""), str(r["n"]),
                      str(r["full_tokens"]), str(r["generated_tokens"]), fmt(r["saved_fraction"], ".1%"),
                      f"{r['answer']} / {r['full_answer']}", _yes(r["agrees"]), correct,
                      f"{r['voters']} / {r['stopped_low']}"])
    headers = ["task", "seed", "deepconf", "paths", "full tok", "deepconf tok", "saved", "answer / full", "agree",
               "correct / full", "voted / stopped"]
    return common.format_table(headers, table)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device, smoke=args.smoke)
    tiny = args.smoke or device.type != "cuda"
    plan = run_plan(args, tiny)
    if args.model:
        plan["model"] = args.model
    fastcot, env = common.start_run(device, args.seed)
    if device.type == "cpu":
        torch.set_num_threads(1)
    print(f"device: {env['device_name']}" + (f" [{common.CPU_LABEL}]" if common.is_cpu(env) else "")
          + f"; torch {env['torch']}, commit {env['git_commit_short']}{' (dirty)' if env['git_dirty'] else ''}, "
          f"{env['date_utc']}")
    bench = Bench(args, plan, fastcot, device)
    print(f"model {plan['model']} ({bench.model.lm_head_weight.dtype}, quantization {args.quantization}), loaded in "
          f"{bench.load_s:.1f} s; reference CoT text {len(bench.ref)} tokens; block size {BLOCK_SIZE}")

    rows = bench.speculative_rows() + bench.prefix_rows()
    if not args.no_deepconf:
        print("deepconf (synthetic task, CPU)", file=sys.stderr, flush=True)
        rows += deepconf_task.deepconf_rows(n=args.deepconf_n or (24 if args.smoke else 64),
                                            seeds=_ints(args.deepconf_seeds or ("0" if args.smoke else "0,1")))
    rows += suffix_rows(bench) if plan["suffix"] else []
    targets = judge_targets(rows, cpu=common.is_cpu(env))

    print()
    print(f"Speculative decoding: prompt {plan['prompt']} tokens, {plan['generate']} generated per request, greedy; "
          f"median of {plan['repeats']} run(s)")
    print(format_spec(rows))
    print("tok/s: decode tokens/s (first token to last, all requests; prefill excluded); x plain: over plain decode "
          "of the same text and batch; accept: accepted / proposed drafts; acc/step: accepted drafts per "
          "verification per sequence; tok/fwd: decode tokens per forward pass per sequence; = plain: token-identical to plain greedy "
          "(! marks a wrong row). cot: teacher-forced synthetic chain of thought (real model compute, the reference's "
          "next token forced); free: the random model's own greedy text (degenerate repetition, not reasoning).")
    print()
    if plan["suffix"]:
        print(f"Suffix decoding vs n-gram, batch 1, greedy: the teacher-forced CoT text ({plan['generate']} tokens) "
              f"and an agent-like trace ({plan['agent_turns']} turns, each a request; earlier outputs repeat)")
        print(format_suffix(rows))
        print("acc/step: accepted drafts per verification; tok/fwd: decode tokens per forward pass. Suffix drafts "
              "adapt their length (up to k) to the match; ngram drafts are k tokens when an n-gram matches.")
        print()
    print(f"Prefix sharing: n samples of one prompt (temperature 0.8), peak KV blocks in use; bound = "
          f"{PREFIX_BOUND} x prompt blocks + blocks of each sample's own generated tokens")
    print(format_prefix(rows))
    if not args.no_deepconf:
        print()
        print("DeepConf on a synthetic task with known answers and confidences (a stub model on the CPU, "
              "benchmarks/deepconf_task.py): each vote against the plain majority of the same number of full paths")
        print(format_deepconf(rows))
        print("full/deepconf: tokens generated by the full vote and by DeepConf; saved: measured (full - deepconf); "
              "agree: the same answer as the full vote; correct: the known answer (the confident plan). "
              "agree tasks: the confident answer is also the majority; trap: an unsure wrong answer is.")
    print()
    for t in targets["results"]:
        where = " ".join(f"{k}={t[k]}" for k in ("batch", "k", "n") if t.get(k) is not None)
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}x" if "speed" in t["target"] else str(t["value"])
        if t["status"] == "not judged":
            print(f"targets: not judged for speed ({t['why']}); {t['target']}: {value} ({where})")
        else:
            print(f"target: {t['target']} {where}: need {t['need']}, got {value} -> {t['status']}"
                  + (f" ({t['why']})" if t.get("why") else ""))
    extra = {"config": vars(args) | {"out_dir": str(args.out_dir), "run_plan": plan, "block_size": BLOCK_SIZE,
                                     "logit_bonus": BIG, "reference_tokens": len(bench.ref),
                                     "model_load_s": bench.load_s},
             "targets": targets}
    path = common.write_results(family=FAMILY, env=env, rows=[{k: r.get(k) for k in ROW_KEYS} for r in rows],
                                out_dir=args.out_dir, extra=extra)
    print(f"\nwrote {path}")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
