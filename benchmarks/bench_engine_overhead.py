"""Engine host-overhead benchmark: the host time of one decode step, with a model that does no math.

The real engine (`fastcot.LLM.from_model`: scheduler, block manager, model runner, sampler,
incremental detokenizer, stop checks) drives a stub model whose forward returns a preallocated
hidden-state slice and whose `compute_logits` returns a preallocated `[N, V]` float32 slice
(rows peaked on the tokens of an English paragraph, so greedy decoding writes text). The
tokenizer is real (`--tokenizer`, default the tiny-random preset's byte-level one), every
request has a stop string that never appears and `ignore_eos`, so detokenization and stop
checks run every step.

What a measured decode step is: the wall time from one `Scheduler.schedule` call of the engine
(`LLMEngine.step`, driven by `LLM.generate`) to the next, excluding nothing, on steps where all B sequences decode. `host` is that
minus the time inside the sampler. By default (`--sampler peaks`) the sampler returns each
row's peak token without touching the logits: the sampling math is device work on a GPU, and
on this CPU the `[B, V]` argmax (131 MB at B=256, V=128k) would not only take tens of ms but
also evict the engine's per-sequence data from the caches before every step, which a GPU host
never sees (a loop touching the tail of 256 long token lists costs ~1 µs more per sequence
after such an eviction). `--sampler torch` runs the engine's real sampler and subtracts its
time. The
breakdown comes from a second run of steps with timers wrapped around the engine's methods
(schedule, prepare, block tables, model, sampling-parameter packing, sampler, detokenize +
stop checks); its means add up to the instrumented step, which the timers lengthen a little.

Long chains of thought are built, not generated: each request's prompt is a short real prompt
followed by G tokens of text, and before the request runs its `Sequence.prompt_len` is set to
the short prompt's length, its `text` to the decoded G tokens and its output state's detokenizer
and text to the state they would have after emitting them. So the engine sees G generated tokens (output length, text
length, block tables, positions) after one cheap prefill. G is staggered by `i mod 16` over the
batch so block boundaries do not all fall on one step. Small batches are measured in several
rounds (fresh engines, lengths interleaved, steps pooled) because a shared VM's speed drifts.

    python benchmarks/bench_engine_overhead.py                    # B=1,64,256 x 1k,100k (a few minutes)
    python benchmarks/bench_engine_overhead.py --quick            # B=1,256 x 1k,100k, fewer steps
    python benchmarks/bench_engine_overhead.py --batch 64 --generated 1k,32k,100k --vocab 32000
    python benchmarks/bench_engine_overhead.py --smoke --out-dir /tmp/bench   # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

# The engine measured is this checkout's, whatever fastcot an editable install points at.
sys.path.insert(0, str(common.REPO_ROOT))

FAMILY = "engine_overhead"
KI = 1024
BLOCK_SIZE = 16
PREFILL_BUDGET = 1 << 20  # tokens per prefill step: a 100k-token prompt prefills in one chunk
STOP = "</never-generated>"
PARAGRAPH = ("Let me think step by step. First, the number of apples is twelve, and each basket holds "
             "three of them, so four baskets are needed. Then we check the remainder: none. ")

DEFAULT = {"batch": (1, 64, 256), "generated": (KI, 100 * KI), "steps": 200, "breakdown_steps": 100, "warmup": 20}
QUICK = {"batch": (1, 256), "generated": (KI, 100 * KI), "steps": 100, "breakdown_steps": 50, "warmup": 10}
SMOKE = {"batch": (1, 4), "generated": (64, 512), "steps": 20, "breakdown_steps": 10, "warmup": 3, "vocab": 4096,
         "rounds": 2}
# A shared VM's speed drifts by tens of percent over seconds: cheap configurations run several
# rounds, the generated lengths interleaved, and pool their steps, so a drift falls on both sides
# of the flatness ratio. Rebuilding a B=256 x 100k state takes ~30 s: those run once.
SMALL_BATCH_ROUNDS = (8, 5)  # batches up to 8 run 5 rounds unless --rounds

# (target, batch, limit in µs of host time per decode step), and the flatness ratio.
LIMIT_TARGETS = [("B=1 host < 150 µs", 1, 150.0), ("B=256 host < 2 ms", 256, 2000.0)]
FLAT_RATIO = 1.10
PARTS = ("schedule", "prepare", "block_tables", "model", "sampling_tensors", "sampler",
         "runner_step", "detokenize_stop")
ROW_KEYS = ("batch", "generated", "generated_min", "generated_max", "context_max", "vocab", "temperature",
            "status", "reason", "rounds", "steps", "step_median_us", "step_p90_us", "step_mean_us", "host_median_us",
            "host_p90_us", "host_per_seq_us", "host_cpu_median_us", "host_cpu_p90_us", "sampler_median_us", "breakdown_steps", "instrumented_step_us",
            "schedule_us", "prepare_us", "block_tables_us", "model_us", "sampling_tensors_us", "sampler_us",
            "runner_other_us", "detokenize_stop_us", "loop_other_us", "setup_s")


def _sizes(text: str) -> list[int]:
    return [int(t[:-1]) * KI if t.lower().endswith("k") else int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=_sizes, default=None, help="comma list of batch sizes (default 1,64,256)")
    p.add_argument("--generated", type=_sizes, default=None,
                   help="comma list of tokens already generated per sequence, k = 1024 (default 1k,100k)")
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary size of the stub's logits (default 128256)")
    p.add_argument("--tokenizer", default="tiny-random", help="preset name or local HF directory (default tiny-random)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; > 0 samples")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps per configuration (default 200)")
    p.add_argument("--breakdown-steps", type=int, default=None, help="instrumented decode steps (default 100)")
    p.add_argument("--warmup", type=int, default=None, help="full-batch decode steps not timed (default 20)")
    p.add_argument("--rounds", type=int, default=None,
                   help="engines built and measured per configuration, lengths interleaved, steps pooled "
                        "(default 5 for B <= 8, else 1)")
    p.add_argument("--sampler", choices=("peaks", "torch"), default="peaks",
                   help="peaks (default): each row's known peak token, no [B, V] math on the host, as on a "
                        "GPU host (see PeakSampler); torch: the engine's sampler, whose [B, V] math on this "
                        "CPU evicts the engine's data from the caches every step")
    p.add_argument("--quick", action="store_true", help="B=1,256 x 1k,100k with fewer steps")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; targets not judged")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine a second thread that is "
                        "descheduled stalls every parallel op for milliseconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=common.DEFAULT_OUT_DIR)
    return p.parse_args(argv)


def run_plan(args) -> dict:
    base = SMOKE if args.smoke else QUICK if args.quick else DEFAULT
    plan = {key: getattr(args, key) if getattr(args, key, None) is not None else base[key]
            for key in ("batch", "generated", "steps", "breakdown_steps", "warmup")}
    plan["rounds"] = args.rounds if args.rounds is not None else base.get("rounds")
    plan["vocab"] = base.get("vocab", args.vocab) if args.vocab == 128256 else args.vocab
    for key in ("steps", "breakdown_steps", "rounds"):
        if plan[key] is not None and plan[key] < (1 if key == "rounds" else 2):
            raise SystemExit(f"--{key.replace('_', '-')} is too small: {plan[key]}")
    return plan


class StubModel:
    """Satisfies the engine's model protocol with no math: preallocated outputs, sliced."""

    def __init__(self, config, *, token_ids: list[int], max_rows: int, seed: int):
        self.config = config
        self.lm_head_weight = torch.empty(0, dtype=torch.float16)  # gives the KV-cache dtype
        self._hidden = torch.zeros(max_rows, config.hidden_size, dtype=torch.float16)
        gen = torch.Generator().manual_seed(seed)
        rows = max_rows + len(token_ids)
        self._logits = torch.randn(rows, config.vocab_size, generator=gen)
        peaks = torch.tensor(token_ids * (rows // len(token_ids) + 1))[:rows]
        self._logits[torch.arange(rows), peaks] = 30.0  # far above N(0, 1): every sampler picks it
        self._peaks = peaks
        self.last_peaks = peaks[:0]  # the peak token of each row of the last logits
        self._period = len(token_ids)
        self._calls = 0

    def __call__(self, input_ids, positions, kv_caches, metadata):
        n = input_ids.shape[0]
        if n > self._hidden.shape[0]:  # prefill only; decode steps never allocate
            self._hidden = torch.zeros(n, self._hidden.shape[1], dtype=self._hidden.dtype)
        return self._hidden[:n]

    def compute_logits(self, hidden):
        # Row b of call c peaks on paragraph token (b + c) mod K: each sequence writes the paragraph.
        start = self._calls % self._period
        self._calls += 1
        self.last_peaks = self._peaks[start:start + hidden.shape[0]]
        return self._logits[start:start + hidden.shape[0]]


class PeakSampler:
    """`--sampler peaks`: returns each row's peak token (what every sampler picks from the stub's
    logits) without reading the `[B, V]` logits, so that, as on a GPU host, the sampling math
    does not evict the engine's data from the CPU caches between steps."""

    def __init__(self, model: StubModel):
        self.model = model

    def __call__(self, logits, tensors, presence=None, output_counts=None):
        return self.model.last_peaks.clone()


class _Done(Exception):
    """Raised from the schedule wrapper once every step has been measured: it ends `generate`."""


class StepRecorder:
    """Times the engine loop step by step through wrappers; the engine's files stay untouched."""

    def __init__(self, llm, engine_modules, *, batch: int, warmup: int, steps: int, breakdown_steps: int):
        self.llm, self.mods = llm, engine_modules
        self.batch, self.warmup, self.steps, self.breakdown_steps = batch, warmup, steps, breakdown_steps
        self.timed_steps: list[dict] = []
        self.breakdown: list[dict] = []
        self.full_steps = 0
        self.start = None  # perf_counter at the start of the open step, if it is recorded
        self.cpu_start = 0.0  # thread_time then
        self.parts: dict[str, float] = {}
        self.instrumented: set[str] = {"schedule", "sampler"}
        self.generated_at_start: list[int] = []
        self.stoppers: dict = {}  # seq_id -> the engine's per-sequence output state (stop checks, text)
        self.running: list = []  # the running sequences when the last step was measured
        self.any_finished = False  # whether one of them had finished then
        self._undo: list = []
        self._orig_schedule = llm.scheduler.schedule
        self._patch(llm.scheduler, "schedule", self._schedule)
        self._patch(llm.runner, "sampler", self._timed("sampler", llm.runner.sampler, cpu=True))

    def _patch(self, obj, name, value) -> None:
        had = name in vars(obj)
        old = vars(obj).get(name)
        setattr(obj, name, value)
        self._undo.append(lambda: setattr(obj, name, old) if had else delattr(obj, name))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _timed(self, name, fn, cpu=False):
        clock, cpu_clock, parts = time.perf_counter, time.thread_time, self.parts
        self.instrumented.add(name)
        if cpu:
            self.instrumented.add(name + "_cpu")

        def timed(*args, **kwargs):
            t0, c0 = clock(), cpu_clock() if cpu else 0.0
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + clock() - t0
                if cpu:
                    parts[name + "_cpu"] = parts.get(name + "_cpu", 0.0) + cpu_clock() - c0

        return timed

    def _instrument(self) -> None:
        runner = self.llm.runner
        for name, attr in (("prepare", "prepare"), ("block_tables", "_sync_tables"), ("block_tables", "_arrange"),
                           ("runner_step", "step")):
            if hasattr(runner, attr):
                self._patch(runner, attr, self._timed(name, getattr(runner, attr)))
        model = runner.model
        proxy = type("TimedStub", (), {"__call__": staticmethod(self._timed("model", model)),
                                       "compute_logits": staticmethod(self._timed("model", model.compute_logits)),
                                       "config": model.config, "lm_head_weight": model.lm_head_weight})()
        self._patch(runner, "model", proxy)
        tensors = getattr(self.mods.model_runner, "SamplingTensors", None)
        if tensors is not None:
            shim = type("TimedSamplingTensors", (), {"from_params": staticmethod(
                self._timed("sampling_tensors", tensors.from_params))})
            self._patch(self.mods.model_runner, "SamplingTensors", shim)
        output = self.mods.output_processor.SequenceOutput
        self._patch(output, "observe", self._timed("detokenize_stop", output.observe))

    def _schedule(self):
        now, now_cpu = time.perf_counter(), time.thread_time()
        if self.start is not None:
            # A part that was instrumented but not called in a step took 0 (e.g. sampling
            # tensors reused in place).
            record = {"step": now - self.start, "step_cpu": now_cpu - self.cpu_start,
                      **dict.fromkeys(self.instrumented, 0.0), **self.parts}
            (self.breakdown if len(self.timed_steps) == self.steps else self.timed_steps).append(record)
            self.start = None
            if len(self.breakdown) == self.breakdown_steps:
                # The engine drops its requests when a step raises: keep what the checks read.
                self.running = list(self.llm.scheduler.running)
                self.any_finished = any(s.finish_reason for s in self.running)
                raise _Done
            if len(self.timed_steps) == self.steps and not self.breakdown:
                self._instrument()
        self.parts.clear()
        t0 = time.perf_counter()
        batch, failed = self._orig_schedule()
        self.parts["schedule"] = time.perf_counter() - t0
        full = batch is not None and not batch.is_prefill and len(batch.seqs) == self.batch
        if full:
            self.full_steps += 1
            if self.full_steps == self.warmup + 1:
                self.generated_at_start = [s.num_output for s in batch.seqs]
            if self.full_steps > self.warmup:
                self.start, self.cpu_start = now, now_cpu
        elif self.full_steps > self.warmup:
            raise RuntimeError(f"a step of {len(batch.seqs) if batch else 0} sequences (prefill: "
                               f"{batch is not None and batch.is_prefill}) inside the timed steps")
        return batch, failed


def stub_config(fastcot_models, vocab: int, max_len: int):
    """The tiny-random config with one layer, one KV head of dim 2 (small caches: the stub never
    reads them) and the vocabulary and context the run needs."""
    base = fastcot_models.load_config("tiny-random")
    return dataclasses.replace(base, vocab_size=vocab, max_position_embeddings=max_len, num_hidden_layers=1,
                               num_attention_heads=1, num_key_value_heads=1, head_dim=2, hidden_size=8)


class Workload:
    """The prompts, pretend-generated tokens and their text; decoded texts cached across configurations."""

    def __init__(self, tokenizer, vocab: int):
        self.tokenizer = tokenizer
        self.paragraph = tokenizer.encode(PARAGRAPH, add_special_tokens=False)
        if max(self.paragraph) >= vocab:
            raise SystemExit(f"--vocab {vocab} is smaller than the tokenizer's ids (up to {max(self.paragraph)})")
        self._body: list[int] = []
        self._texts: dict[int, str] = {}

    def body(self, n: int) -> list[int]:
        while len(self._body) < n:
            self._body += self.paragraph
        return self._body[:n]

    def text(self, n: int) -> str:
        if n not in self._texts:
            self._texts[n] = self.tokenizer.decode(self.body(n), skip_special_tokens=True)
        return self._texts[n]

    def prompt(self, i: int) -> list[int]:
        # Distinct from the first block on, so no two requests share prefix-cache blocks.
        return self.tokenizer.encode(f"Request {i}: reason carefully, step by step.")


def rounds_for(plan, batch: int) -> int:
    if plan["rounds"] is not None:
        return plan["rounds"]
    return SMALL_BATCH_ROUNDS[1] if batch <= SMALL_BATCH_ROUNDS[0] else 1


@dataclasses.dataclass
class Measurement:
    """One engine's recorded steps (seconds per step, and per part for the instrumented ones)."""

    timed_steps: list[dict]
    breakdown: list[dict]
    generated_at_start: list[int]
    context_max: int
    setup_s: float


def measure(ctx, batch: int, generated: int) -> Measurement:
    """Build an engine holding `batch` sequences of about `generated` output tokens and record its steps."""
    plan, fastcot = ctx.plan, ctx.fastcot
    t_setup = time.perf_counter()
    prompts, pretend = [], {}
    for i in range(batch):
        short = ctx.work.prompt(i)
        n = generated + i % BLOCK_SIZE
        prompts.append(short + ctx.work.body(n))
        pretend[id(prompts[-1])] = (len(short), ctx.work.text(n))
    steps = plan["warmup"] + plan["steps"] + plan["breakdown_steps"] + 2
    # During setup, decode steps alternate with prefill steps: fewer than `batch` more tokens each.
    max_len = max(map(len, prompts)) + batch + steps + 2 * BLOCK_SIZE
    blocks = sum(-(-(len(p) + batch + steps) // BLOCK_SIZE) + 1 for p in prompts)
    blocks = max(blocks, -(-max_len // BLOCK_SIZE))  # the engine refuses a cache short of one max_len sequence
    model = StubModel(stub_config(fastcot.models, plan["vocab"], max_len), token_ids=ctx.work.paragraph,
                      max_rows=batch, seed=ctx.args.seed)
    llm = fastcot.LLM.from_model(model, ctx.tokenizer, device="cpu", max_num_seqs=batch, block_size=BLOCK_SIZE,
                                 num_kv_blocks=blocks, max_num_batched_tokens=max(PREFILL_BUDGET, max_len),
                                 seed=ctx.args.seed)
    params = [fastcot.SamplingParams(temperature=ctx.args.temperature, max_tokens=max_len, ignore_eos=True,
                                     stop=[STOP], seed=ctx.args.seed + i) for i in range(batch)]
    if ctx.args.sampler == "peaks":
        llm.runner.sampler = PeakSampler(model)
    recorder = StepRecorder(llm, ctx.mods, batch=batch, warmup=plan["warmup"], steps=plan["steps"],
                            breakdown_steps=plan["breakdown_steps"])
    _pretend_generated(llm, ctx.mods, recorder, pretend)
    try:
        llm.generate(prompts, params, use_tqdm=False)
        raise RuntimeError("generation ended before every step was measured")
    except _Done:
        pass
    finally:
        recorder.restore()
    running = recorder.running
    if len(running) != batch or recorder.any_finished:
        raise RuntimeError(f"{len(running)} sequences running at the end, expected {batch}, none finished")
    if any(recorder.stoppers[s.seq_id].length <= len(pretend[id(prompts[int(s.request_id)])][1]) for s in running):
        raise RuntimeError("a sequence's text did not grow: detokenization produced nothing")
    setup_s = time.perf_counter() - t_setup - sum(r["step"] for r in recorder.timed_steps + recorder.breakdown)
    result = Measurement(recorder.timed_steps, recorder.breakdown, recorder.generated_at_start,
                         max(len(s) for s in running), setup_s)
    del llm, model, prompts, recorder, running
    gc.collect()
    return result


def _pretend_generated(llm, mods, recorder, pretend) -> None:
    """Make each request's long prompt count as generated output (see the module docstring)."""
    engine = llm.engine
    make_request = engine.make_request

    def make(request_id, prompt, params, **kwargs):
        request = make_request(request_id, prompt, params, **kwargs)
        prompt_len, text = pretend[id(prompt)]
        for seq, out in zip(request.seqs, request.outs):
            seq.prompt_len, seq.text = prompt_len, text
            # Steady state after emitting every token: the detokenizer has emitted them all and
            # the text so far is one piece.
            out.detok = mods.detokenizer.IncrementalDetokenizer(llm.tokenizer, context=seq.token_ids[prompt_len:])
            out.pieces, out.length = [text], len(text)
            recorder.stoppers[seq.seq_id] = out
        return request

    recorder._patch(engine, "make_request", make)


def summarize(runs: list[Measurement], batch: int) -> dict:
    """The row fields of a configuration, its rounds' steps pooled."""
    us = 1e6
    timed = [r for m in runs for r in m.timed_steps]
    breakdown = [r for m in runs for r in m.breakdown]
    steps = [r["step"] * us for r in timed]
    host = [(r["step"] - r.get("sampler", 0.0)) * us for r in timed]
    host_cpu = [(r["step_cpu"] - r.get("sampler_cpu", 0.0)) * us for r in timed]
    out = {
        "rounds": len(runs), "steps": len(steps), "step_median_us": statistics.median(steps),
        "step_p90_us": common.percentile(steps, 90), "step_mean_us": statistics.fmean(steps),
        "host_median_us": statistics.median(host), "host_p90_us": common.percentile(host, 90),
        "host_per_seq_us": statistics.median(host) / batch,
        "host_cpu_median_us": statistics.median(host_cpu), "host_cpu_p90_us": common.percentile(host_cpu, 90),
        "sampler_median_us": statistics.median(r.get("sampler", 0.0) * us for r in timed),
        "generated_min": min(g for m in runs for g in m.generated_at_start),
        "generated_max": max(g for m in runs for g in m.generated_at_start),
        "context_max": max(m.context_max for m in runs), "setup_s": sum(m.setup_s for m in runs),
        "breakdown_steps": len(breakdown),
    }
    mean = {k: statistics.fmean(r.get(k, 0.0) for r in breakdown) * us for k in ("step", *PARTS)}
    present = set().union(*breakdown)

    def part(key):
        return mean[key] if key in present else None

    out |= {"instrumented_step_us": mean["step"], "schedule_us": part("schedule"), "prepare_us": part("prepare"),
            "model_us": part("model"), "sampling_tensors_us": part("sampling_tensors"),
            "sampler_us": part("sampler"), "detokenize_stop_us": part("detokenize_stop")}
    if "block_tables" in present:
        out["block_tables_us"] = mean["block_tables"]
    if "runner_step" in present:
        out["runner_other_us"] = mean["runner_step"] - sum(mean[k] for k in
                                                           ("prepare", "model", "sampling_tensors", "sampler"))
        out["loop_other_us"] = mean["step"] - mean["schedule"] - mean["runner_step"] - mean["detokenize_stop"]
    return out


def judge_targets(rows: list[dict], clock: str = "wall") -> list[dict]:
    """The issue's targets on the host time per step: wall time (`clock="wall"`) or the
    engine thread's CPU time (`"cpu"`, which time spent descheduled on a shared machine does
    not inflate)."""
    key = "host_median_us" if clock == "wall" else "host_cpu_median_us"
    ok = {(r["batch"], r["generated"]): r for r in rows if r["status"] == "ok"}
    results = []
    for name, batch, limit in LIMIT_TARGETS:
        runs = sorted(g for b, g in ok if b == batch)
        for g in runs or [None]:
            r = ok.get((batch, g))
            value = None if r is None else r[key]
            results.append({"target": name, "batch": batch, "generated": g, "need": f"< {limit:g} µs", "value": value,
                            "step_median_us": None if r is None else r["step_median_us"],
                            "status": "n/a" if r is None else "PASS" if value < limit else "FAIL"})
    for batch in sorted({b for b, _ in ok}):
        runs = sorted(g for b, g in ok if b == batch)
        short, long = runs[0], runs[-1]
        result = {"target": f"B={batch} flat 1k -> 100k", "batch": batch, "generated": [short, long],
                  "need": f"ratio <= {FLAT_RATIO:.2f}", "value": None, "step_median_us": None, "status": "n/a"}
        if short <= 2 * KI and long >= 100 * KI:
            result["value"] = ok[batch, long][key] / ok[batch, short][key]
            result["step_median_us"] = [ok[batch, short]["step_median_us"], ok[batch, long]["step_median_us"]]
            result["status"] = "PASS" if result["value"] <= FLAT_RATIO else "FAIL"
        else:
            result["why"] = "needs a run at <= 2k and one at >= 100k generated tokens"
        results.append(result)
    return results


def _k(n) -> str:
    return f"{n / KI:.0f}k" if n >= KI and n % KI == 0 else str(n)


def format_rows(rows: list[dict]) -> str:
    headers = ["B", "generated", "step µs", "p90", "host µs", "p90", "/seq", "cpu µs", "sampler", "sched", "prepare",
               "(tables)", "model", "params", "sampler", "runner+", "detok+stop", "loop+", "instr."]
    fmt = common.fmt
    table = []
    for r in rows:
        cells = [str(r["batch"]), _k(r["generated"])]
        if r["status"] != "ok":
            table.append(cells + ["error"] + [""] * (len(headers) - 3))
            continue
        cells += [fmt(r[k], ".0f") for k in ("step_median_us", "step_p90_us", "host_median_us", "host_p90_us")]
        cells += [fmt(r["host_per_seq_us"], ".2f"), fmt(r["host_cpu_median_us"], ".0f"), fmt(r["sampler_median_us"], ".0f")]
        cells += [fmt(r[k], ".0f") for k in ("schedule_us", "prepare_us", "block_tables_us", "model_us",
                                             "sampling_tensors_us", "sampler_us", "runner_other_us",
                                             "detokenize_stop_us", "loop_other_us", "instrumented_step_us")]
        table.append(cells)
    return common.format_table(headers, table, groups=[2, 4, 8, 9])


def format_targets(results: list[dict]) -> str:
    table = []
    for t in results:
        g = t["generated"]
        gen = "-" if g is None else " -> ".join(map(_k, g)) if isinstance(g, list) else _k(g)
        value = t["value"]
        shown = "n/a" if value is None else f"{value:.2f}x" if "flat" in t["target"] else f"{value:.0f} µs"
        table.append([t["target"], gen, t["need"], shown, t["status"] + (f" ({t['why']})" if t.get("why") else "")])
    return common.format_table(["target", "generated", "need", "host", "status"], table)


def run_all(ctx) -> list[dict]:
    """One row per (batch, generated); a configuration that fails gets an error row and no more rounds."""
    plan = ctx.plan
    rows = []
    for batch in plan["batch"]:
        rounds = rounds_for(plan, batch)
        runs = {g: [] for g in plan["generated"]}
        errors = {}
        for r in range(rounds):
            for g in plan["generated"]:
                if g in errors:
                    continue
                print(f"B={batch} generated={_k(g)} round {r + 1}/{rounds}", file=sys.stderr, flush=True)
                try:
                    runs[g].append(measure(ctx, batch, g))
                except Exception as exc:  # noqa: BLE001 - one failing configuration must not hide the others
                    errors[g] = f"{type(exc).__name__}: {exc}"
                    print(f"ERROR B={batch} generated={_k(g)}: {errors[g]}", file=sys.stderr)
                gc.collect()
        for g in plan["generated"]:
            row = {key: None for key in ROW_KEYS} | {"batch": batch, "generated": g, "vocab": plan["vocab"],
                                                     "temperature": ctx.args.temperature, "status": "ok"}
            if g in errors:
                row |= {"status": "error", "reason": errors[g]}
            else:
                row |= summarize(runs[g], batch)
            rows.append(row)
    return rows


class Context:
    def __init__(self, args, plan):
        import fastcot
        import fastcot.engine.detokenizer
        import fastcot.engine.model_runner
        import fastcot.engine.output_processor
        import fastcot.models

        self.args, self.plan, self.fastcot = args, plan, fastcot
        engine = fastcot.engine
        self.mods = type("EngineModules", (), {"output_processor": engine.output_processor,
                                               "model_runner": engine.model_runner, "detokenizer": engine.detokenizer})
        self.tokenizer = fastcot.models.load_tokenizer(args.tokenizer)
        self.work = Workload(self.tokenizer, plan["vocab"])


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = run_plan(args)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    ctx = Context(args, plan)
    env = common.collect_env(torch.device("cpu"))
    env["load_average_start"] = os.getloadavg()
    env["fastcot_version"] = getattr(ctx.fastcot, "__version__", None)
    env["fastcot_path"] = str(Path(ctx.fastcot.__file__).parent)
    print(f"device: {env['device_name']} ({env['cpu_count']} cores, torch threads {env['torch_threads']}); "
          f"torch {env['torch']}, commit {env['git_commit_short']}{' (dirty)' if env['git_dirty'] else ''}, "
          f"{env['date_utc']}")
    if env["load_average_start"][0] > 0.5:
        print(f"warning: load average {env['load_average_start'][0]:.2f} before the run: other processes share "
              f"the CPU and inflate these numbers")
    print(f"stub model: vocab {plan['vocab']}, tokenizer {args.tokenizer}, "
          f"{'greedy' if args.temperature == 0 else f'temperature {args.temperature}'}, stop string + ignore_eos; "
          f"{plan['steps']} timed + {plan['breakdown_steps']} instrumented steps after {plan['warmup']} warm-up, "
          f"per round; rounds: " + ", ".join(f"B={b}: {rounds_for(plan, b)}" for b in plan["batch"]))

    rows = run_all(ctx)

    env["load_average_end"] = os.getloadavg()
    print()
    print(format_rows(rows))
    print("step: wall time per decode step of the engine loop, excluding nothing (median, p90); host: step minus "
          "the sampler's [B, V] math (device work on a GPU); /seq: host per sequence; cpu: host on the engine "
          "thread's CPU clock (thread_time); sampler: its median. "
          "Breakdown (means of the instrumented steps, which they add up to as 'instr.'): sched = "
          "Scheduler.schedule, prepare = ModelRunner.prepare (tables: its block-table writes and slot moves), model = stub "
          "forward + logits, params = SamplingTensors.from_params, runner+ = rest of ModelRunner.step "
          "(.tolist(), ...), detok+stop = SequenceOutput.observe, loop+ = rest of LLMEngine.step and the LLM "
          "loop.")
    if args.smoke:
        targets = {"judged": False, "why": "smoke run: tiny sizes"}
        print(f"\ntargets: not judged ({targets['why']})")
    else:
        results = judge_targets(rows)
        cpu_results = judge_targets(rows, clock="cpu")
        targets = {"judged": True, "metric": "host_median_us", "results": results,
                   "cpu_time": {"metric": "host_cpu_median_us", "results": cpu_results}}
        print(f"\ntargets (issue 5, host wall time per decode step on this CPU: {env['device_name']}):")
        print(format_targets(results))
        print("\nthe same on the engine thread's CPU time (time descheduled on a shared machine excluded):")
        print(format_targets(cpu_results))
    extra = {"config": vars(args) | {"out_dir": str(args.out_dir), "run_plan": plan, "block_size": BLOCK_SIZE,
                                     "prefill_budget": PREFILL_BUDGET, "stop": STOP},
             "targets": targets}
    path = common.write_results(family=FAMILY, env=env, rows=[{k: r.get(k) for k in ROW_KEYS} for r in rows],
                                out_dir=args.out_dir, extra=extra)
    print(f"\nwrote {path}")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
