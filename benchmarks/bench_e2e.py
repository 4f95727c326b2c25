"""End-to-end decode benchmark: tokens/s of a whole Llama decode step against the memory roofline.

fastcot's model (`fastcot.models.load_model` on a preset with random weights, int4 g128 or float
decoder weights, float lm_head) runs decode steps directly (no scheduler, no sampling beyond a
greedy argmax) over a paged KV cache that is filled *synthetically*: every sequence already holds
`context` tokens of random keys and values, its block table points at shuffled blocks, and
`seq_lens = context + 1`, so a 128k context costs no prefill. Each step writes the new token's
keys and values at position `context` and attends to all `context + 1` of them; a step is timed
from launch until the next token ids are on the host (on a GPU the step is one CUDA-graph replay).

Every row reports tokens/s, bytes moved per step, achieved GB/s and the fraction of the roofline:
bytes per step over the copy bandwidth measured in the same run. Peers, in the same run, on the
same shapes and the same (float) weights: plain PyTorch decode with SDPA on a contiguous cache,
and Hugging Face transformers `generate` with its static cache (eager, and torch.compile'd where
transformers compiles it). Each fastcot row is first checked against the plain PyTorch step on
the same weights and cache contents. Without a GPU (or with --smoke) it runs the tiny-random
preset on CPU in seconds, labelled CPU.

    python benchmarks/bench_e2e.py                  # GPU: 8B shapes, B=1 at 1k-128k, B=64/256 at 2k/4k, peers
    python benchmarks/bench_e2e.py --quick          # GPU: fewer contexts, no B=256
    python benchmarks/bench_e2e.py --models 70b --weights int4 --peers none
    python benchmarks/bench_e2e.py --smoke --out-dir /tmp/bench   # tiny CPU run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import e2e_peers as peers
from e2e_report import ctx_label, format_rows, format_targets, judge_targets, sort_rows

FAMILY = "e2e"
KI = 1024
PRESETS = {"tiny": "tiny-random", "8b": "llama-3.1-8b-random", "70b": "llama-3.1-70b-random"}
GPU = {"models": "8b", "weights": "int4,float", "kv_dtype": "float,fp8", "context": "1k,8k,32k,128k",
       "batch": "64,256", "batch_context": "2k,4k", "peers": "sdpa,hf,hf-compile", "steps": 40, "hf_tokens": 24,
       "engine": "int4", "engine_tokens": 128, "engine_max_prefill": 256 * KI}
QUICK = GPU | {"context": "1k,32k", "batch": "64", "batch_context": "4k", "steps": 20, "peers": "sdpa,hf"}
SMOKE = {"models": "tiny", "weights": "int4,float", "kv_dtype": "float,fp8", "context": "16,200", "batch": "4",
         "batch_context": "48", "peers": "sdpa,hf", "steps": 4, "hf_tokens": 6, "engine": "int4",
         "engine_tokens": 8, "engine_max_prefill": KI}
BLOCK_SIZE = 16
HF_WARMUP_STEPS = {"hf_generate": 2, "hf_generate_compile": 5}  # compile + CUDA-graph recording steps
# Sanity gate of the logits against the plain PyTorch step (same weights, same cache contents):
# relative to max|logits|. A wrong block, slot or scale errs by O(1); the kernels' own
# tolerances are the kernel tests' business.
CHECK_RTOL = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 1e-1}

ROW_KEYS = ("model", "impl", "label", "weights", "kv_dtype", "act_dtype", "batch", "context", "status", "reason",
            "steps", "step_median_us", "step_p20_us", "step_p80_us", "timer", "tokens_per_s", "bytes_per_step",
            "weight_bytes", "kv_bytes", "flops_per_step", "gbps", "tflops", "pct_roofline", "roofline_tokens_per_s",
            "check_rel_err", "check_tol", "check_top1_agree", "prefill_s", "peer_note")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}


def _sizes(text: str) -> list[int]:
    return [int(t[:-1]) * KI if t.lower().endswith("k") else int(t) for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]


def dtype_name(dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma list of 8b, 70b, tiny (GPU default 8b; 70b fits only as int4)")
    p.add_argument("--weights", default=None, help="comma list of int4, float (default both)")
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16",
                   help="activation / float weight / float KV dtype on GPU (default bf16; CPU uses fp32)")
    p.add_argument("--kv-dtype", default=None, help="comma list of float, fp8 (default both)")
    p.add_argument("--context", default=None, help="batch-1 contexts, k = 1024 (GPU default 1k,8k,32k,128k)")
    p.add_argument("--batch", default=None, help="throughput batch sizes (GPU default 64,256; 'none' for none)")
    p.add_argument("--batch-context", default=None, help="comma list of contexts of every sequence in the batch rows (GPU default 2k,4k)")
    p.add_argument("--peers", default=None,
                   help="comma list of sdpa, hf, hf-compile, or none (GPU default all three; CPU sdpa,hf)")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps per row (GPU default 40)")
    p.add_argument("--hf-tokens", type=int, default=None, help="tokens each HF generate call makes (default 24)")
    p.add_argument("--hf-prefill-chunk", type=int, default=4096,
                   help="HF prefill tokens per chunk over the batch (its static-cache mask is chunk x cache length)")
    p.add_argument("--engine", default=None, help="weights (int4, float, none) whose rows also run through the "
                   "engine, LLM.generate with a real prefill (default int4)")
    p.add_argument("--engine-tokens", type=int, default=None, help="tokens each engine request generates (default 128)")
    p.add_argument("--engine-max-prefill", type=_sizes, default=None,
                   help="engine rows only where batch x context <= this many prompt tokens (default 256k)")
    p.add_argument("--no-check", action="store_true", help="skip the logits check against plain PyTorch")
    p.add_argument("--no-graphs", action="store_true", help="time eager steps on a GPU instead of CUDA graphs")
    p.add_argument("--quick", action="store_true", help="GPU subset: 1k,32k; B=64; sdpa and eager HF peers")
    p.add_argument("--smoke", action="store_true", help="tiny-random preset on CPU, seconds; targets not judged")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--mem-fraction", type=float, default=0.9, help="use at most this fraction of free GPU memory")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; rows that would start later are skipped and listed (GPU default 540, CPU none)")
    p.add_argument("--out-dir", type=Path, default=common.DEFAULT_OUT_DIR, help="where the JSON/CSV go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel ranks (GPUs): runs only the engine over --tp-model, see e2e_tp.py")
    p.add_argument("--tp-model", type=Path, default=None, help="checkpoint directory for --tp")
    return p.parse_args(argv)


def run_plan(args, tiny: bool) -> dict:
    base = SMOKE if tiny else QUICK if args.quick else GPU
    pick = {k: getattr(args, k) if getattr(args, k) is not None else base[k] for k in base}
    if isinstance(pick["engine_max_prefill"], list):
        pick["engine_max_prefill"] = pick["engine_max_prefill"][0]
    plan = {"models": _names(pick["models"]), "weights": _names(pick["weights"]), "kv_dtype": _names(pick["kv_dtype"]),
            "context": _sizes(pick["context"]), "batch": _sizes(pick["batch"]) if pick["batch"] != "none" else [],
            "batch_context": _sizes(pick["batch_context"]), "peers": _names(pick["peers"]), "steps": pick["steps"],
            "hf_tokens": pick["hf_tokens"], "engine": _names(pick["engine"]), "engine_tokens": pick["engine_tokens"],
            "engine_max_prefill": pick["engine_max_prefill"]}
    for key, allowed in (("models", PRESETS), ("weights", ("int4", "float")), ("kv_dtype", ("float", "fp8")),
                         ("peers", ("sdpa", "hf", "hf-compile")), ("engine", ("int4", "float"))):
        unknown = set(plan[key]) - set(allowed)
        if unknown:
            raise SystemExit(f"--{key.replace('_', '-')}: unknown {sorted(unknown)}; choose from {sorted(allowed)}")
    warm = max([HF_WARMUP_STEPS["hf_generate_compile" if p == "hf-compile" else "hf_generate"]
                for p in plan["peers"] if p.startswith("hf")] or [0])
    if plan["steps"] < 2 or plan["hf_tokens"] < warm + 3 or plan["engine_tokens"] < 3:
        raise SystemExit(f"--steps must be >= 2 and --hf-tokens >= {warm + 3} (the HF peers' untimed steps + 3), "
                         "--engine-tokens >= 3")
    return plan


# ---------------------------------------------------------------------------------------------
# Bytes per step: the roofline


def weight_bytes(model) -> dict:
    """Bytes of the weights one decode step must read: decoder (linears as stored, norms),
    final norm and lm_head; the embedding table contributes one row per sequence.
    `dequantized`: what float copies of the int4 weights would take (the plain PyTorch check)."""
    decoder = dequantized = params = 0
    for module in model.model.layers.modules():
        w = getattr(module, "weight", None)
        if hasattr(w, "qweight"):  # Int4Linear: packed weight + scales (+ zeros)
            decoder += w.nbytes
            dequantized += w.shape[0] * w.shape[1] * model.lm_head_weight.element_size()
            params += w.shape[0] * w.shape[1]
        elif isinstance(w, torch.Tensor):
            decoder += w.nbytes
            params += w.numel() if w.dim() == 2 else 0
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            decoder += bias.nbytes
    head = model.lm_head_weight
    return {"decoder": decoder, "lm_head": head.nbytes + model.model.norm.weight.nbytes,
            "embed_row": head.shape[1] * head.element_size(), "dequantized": dequantized,
            "matmul_params": params + head.numel()}


def kv_bytes_per_token(config, kv_dtype) -> int:
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * kv_dtype.itemsize


def step_bytes(weights: dict, config, *, batch: int, context: int, kv_dtype) -> dict:
    """The fewest bytes a decode step moves: every weight once, each sequence's `context + 1`
    cached tokens read and its new token's keys/values written, the fp32 logits written.
    Activations between kernels are not counted (a fused step keeps them on chip). Also the
    step's FLOPs: 2 per weight per sequence, and 4 x Hq x D per cached token per layer."""
    per_token = kv_bytes_per_token(config, kv_dtype)
    kv = batch * (context + 2) * per_token
    w = weights["decoder"] + weights["lm_head"] + batch * weights["embed_row"]
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * (context + 1)
    return {"weight_bytes": w, "kv_bytes": kv, "bytes_per_step": w + kv + batch * config.vocab_size * 4,
            "flops_per_step": batch * (2 * weights["matmul_params"] + attention)}


# ---------------------------------------------------------------------------------------------
# Timing


def capture_step(fn, device, graphs: bool):
    """(step, timer): `step()` returns the next token ids `[B]`; on a GPU a CUDA-graph replay."""
    if device.type != "cuda" or not graphs:
        return fn, "eager"
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # autotuning and lazy tables happen here, not in the capture
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return (lambda: (graph.replay(), out)[1]), "cuda_graph"
    except Exception as exc:  # noqa: BLE001 - any capture failure means "time it eagerly"
        torch.cuda.synchronize()
        return fn, f"eager (graph capture failed: {type(exc).__name__}: {exc})"[:200]


@contextlib.contextmanager
def index_checks_off():
    """fastcot validates block tables with a host sync on eager calls; not while timing."""
    old = os.environ.get("FASTCOT_INDEX_CHECKS")
    os.environ["FASTCOT_INDEX_CHECKS"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTCOT_INDEX_CHECKS")
        else:
            os.environ["FASTCOT_INDEX_CHECKS"] = old


def time_steps(step, *, steps: int, warmup: int = 3) -> dict:
    """Wall time from launching a step until its token ids are on the host (`.tolist()`)."""
    with index_checks_off():
        for _ in range(warmup):
            step().tolist()
        samples = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step().tolist()
            samples.append((time.perf_counter() - t0) * 1e6)
    return summarize(samples)


def summarize(samples_us: list[float]) -> dict:
    return {"steps": len(samples_us), "step_median_us": common.percentile(samples_us, 50),
            "step_p20_us": common.percentile(samples_us, 20), "step_p80_us": common.percentile(samples_us, 80)}


# ---------------------------------------------------------------------------------------------
# Measurement


class Context:
    def __init__(self, args, plan, fastcot, device, env, tiny):
        self.args, self.plan, self.fastcot, self.device, self.env, self.tiny = args, plan, fastcot, device, env, tiny
        self.float_dtype = torch.float32 if device.type == "cpu" else DTYPES[args.dtype]
        self.copy_gbps = env["copy_bandwidth"]["gbps"]
        budget = args.time_budget if args.time_budget is not None else (None if tiny else 540.0)
        self.deadline = None if not budget else time.monotonic() + budget
        self.skipped: list[dict] = []
        self.gen = torch.Generator(device=device).manual_seed(args.seed)

    def kv_dtype(self, name: str):
        return self.float_dtype if name == "float" else DTYPES[name]

    def weights_name(self, name: str) -> str:
        return "int4" if name == "int4" else dtype_name(self.float_dtype)

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def skip(self, what: dict, why: str) -> None:
        self.skipped.append(what | {"why": why})
        print(f"  skipped {what}: {why}", file=sys.stderr, flush=True)

    def fits(self, nbytes: int) -> tuple[bool, str]:
        if self.device.type != "cuda":
            return True, ""
        common.free_memory()
        free, _ = torch.cuda.mem_get_info(self.device)
        limit = self.args.mem_fraction * free
        why = f"needs {nbytes / 2**30:.1f} GiB, {self.args.mem_fraction:.0%} of free is {limit / 2**30:.1f} GiB"
        return nbytes <= limit, why

    def row(self, **fields) -> dict:
        return {key: fields.get(key) for key in ROW_KEYS}

    def timed(self, row: dict, timing: dict, nbytes: dict) -> dict:
        seconds = timing["step_median_us"] / 1e6
        gbps = nbytes["bytes_per_step"] / seconds / 1e9
        return row | timing | nbytes | {
            "status": row["status"] or "ok", "tokens_per_s": row["batch"] / seconds, "gbps": gbps,
            "tflops": nbytes["flops_per_step"] / seconds / 1e12,
            "pct_roofline": 100.0 * gbps / self.copy_gbps,
            "roofline_tokens_per_s": row["batch"] * self.copy_gbps * 1e9 / nbytes["bytes_per_step"]}


def release() -> None:
    """Free GPU memory between rows (a full `gc.collect` costs ~0.25 s with transformers loaded:
    on CPU, where nothing here is large, it is skipped)."""
    if torch.cuda.is_available():
        common.free_memory()


def fill_random_(cache: torch.Tensor, gen, float_dtype, chunk_bytes: int = 64 << 20) -> None:
    """N(0, 1) keys or values; fp8 caches are rounded from `float_dtype`, ~64 MiB at a time."""
    if cache.dtype.itemsize > 1:
        cache.normal_(generator=gen)
        return
    flat = cache.view(cache.shape[0], -1)
    rows = max(1, min(flat.shape[0], chunk_bytes // (flat.shape[1] * float_dtype.itemsize)))
    scratch = torch.empty(rows, flat.shape[1], dtype=float_dtype, device=cache.device)
    for start in range(0, flat.shape[0], rows):
        part = flat[start:start + rows]
        part.copy_(scratch[:part.shape[0]].normal_(generator=gen))


class Row:
    """One (weights, KV dtype, batch, context) of fastcot: a filled paged cache and its step inputs."""

    def __init__(self, ctx, model, kv_dtype, batch: int, context: int):
        cfg, dev = model.config, ctx.device
        per_seq = -(-(context + 1) // BLOCK_SIZE)
        n_blocks = batch * per_seq
        self.caches = [tuple(torch.empty(cfg.kv_cache_shape(n_blocks, BLOCK_SIZE), dtype=kv_dtype, device=dev)
                             for _ in "kv") for _ in range(cfg.num_hidden_layers)]
        for pair in self.caches:
            for cache in pair:
                fill_random_(cache, ctx.gen, ctx.float_dtype)
        perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(ctx.args.seed + context))
        self.tables = perm.view(batch, per_seq).to(torch.int32).to(dev)
        slots = self.tables[:, context // BLOCK_SIZE].long() * BLOCK_SIZE + context % BLOCK_SIZE
        from fastcot.engine.metadata import AttentionMetadata

        self.metadata = AttentionMetadata(slot_mapping=slots.to(torch.int32), block_tables=self.tables,
                                          seq_lens=torch.full((batch,), context + 1, dtype=torch.int32, device=dev))
        self.input_ids = torch.randint(0, cfg.vocab_size, (batch,), generator=ctx.gen, device=dev)
        self.positions = torch.full((batch,), context, dtype=torch.int64, device=dev)
        self.model, self.kv_dtype, self.batch, self.context = model, kv_dtype, batch, context

    @staticmethod
    def nbytes(config, kv_dtype, batch: int, context: int) -> int:
        return batch * -(-(context + 1) // BLOCK_SIZE) * BLOCK_SIZE * kv_bytes_per_token(config, kv_dtype)

    def logits(self) -> torch.Tensor:
        hidden = self.model(self.input_ids, self.positions, self.caches, self.metadata)
        return self.model.compute_logits(hidden)

    def contiguous(self, dtype) -> tuple[list, list]:
        """`[B, Hkv, context + 1, D]` copies in `dtype` (fp8 dequantized with scale 1)."""
        length = self.context + 1
        ks = [peers.gather_contiguous(k, self.tables, length, dtype) for k, _ in self.caches]
        vs = [peers.gather_contiguous(v, self.tables, length, dtype) for _, v in self.caches]
        return ks, vs


def contiguous_bytes(config, dtype, batch: int, context: int) -> int:
    """A contiguous float copy of a row's cache, with 10% for the gather's temporaries."""
    return int(1.1 * batch * (context + 1) * kv_bytes_per_token(config, dtype))


def check_logits(ours: torch.Tensor, ref: torch.Tensor, dtype) -> dict:
    err = (ours.float() - ref.float()).abs().max().item()
    rel = err / max(ref.float().abs().max().item(), 1e-30)
    finite = bool(torch.isfinite(ours).all())
    tol = CHECK_RTOL[dtype]
    return {"check_rel_err": rel if finite else float("nan"), "check_tol": tol,
            "check_top1_agree": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "status": "ok" if finite and rel <= tol else "wrong"}


def measure_fastcot(ctx, model_name, model, weights, wname: str, kv: str, batch: int, context: int,
                    plain) -> list[dict]:
    """fastcot's row (checked against the plain PyTorch step), and the timed plain PyTorch peer
    when weights and KV are both float and the sdpa peer was asked for."""
    cfg, kv_dtype, dt = model.config, ctx.kv_dtype(kv), ctx.float_dtype
    base = {"model": model_name, "weights": ctx.weights_name(wname), "kv_dtype": dtype_name(kv_dtype),
            "batch": batch, "context": context, "act_dtype": dtype_name(dt)}
    nbytes = step_bytes(weights, cfg, batch=batch, context=context, kv_dtype=kv_dtype)
    row = ctx.row(**base, impl="fastcot", label="fastcot")
    ok, why = ctx.fits(Row.nbytes(cfg, kv_dtype, batch, context))
    if not ok:
        ctx.skip(base | {"impl": "fastcot"}, why)
        return []
    out = []
    try:
        setup = Row(ctx, model, kv_dtype, batch, context)
        with torch.inference_mode():
            logits = setup.logits()
            contig = None
            want_peer = "sdpa" in ctx.plan["peers"] and wname == "float" and kv == "float"
            if plain is not None and (not ctx.args.no_check or want_peer):
                if ctx.fits(contiguous_bytes(cfg, dt, batch, context))[0]:
                    contig = setup.contiguous(dt)
                    ref = plain.step(setup.input_ids, *contig, context, kv_dtype=kv_dtype)
                    if not ctx.args.no_check:
                        row |= check_logits(logits, ref, dt)
                    del ref
                else:
                    row["reason"] = "not checked: no memory for a contiguous copy of the cache"
            del logits
            step, timer = capture_step(lambda: setup.logits().argmax(-1), ctx.device, not ctx.args.no_graphs)
            row = ctx.timed(row | {"timer": timer}, time_steps(step, steps=ctx.plan["steps"]), nbytes)
            del step
            out.append(row)
            if want_peer:
                del setup
                release()
                out.append(measure_plain(ctx, base, plain, contig, cfg, nbytes))
    except Exception as exc:  # noqa: BLE001 - one broken row must not end the run
        out.append(row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]})
    release()
    return out


def measure_plain(ctx, base: dict, plain, contig, cfg, nbytes: dict) -> dict:
    """The plain PyTorch SDPA step on a contiguous cache (the fastcot row's contents when they fit)."""
    row = ctx.row(**base | {"impl": "torch_sdpa", "label": "PyTorch SDPA"},
                  peer_note="F.linear + SDPA(enable_gqa) on a contiguous [B, Hkv, L, D] cache, "
                            "torch reference norms/rope")
    batch, context, dt = base["batch"], base["context"], ctx.float_dtype
    try:
        if contig is None:
            ok, why = ctx.fits(contiguous_bytes(cfg, dt, batch, context))
            if not ok:
                return row | {"status": "error", "reason": why}
            shape = (batch, cfg.num_key_value_heads, context + 1, cfg.head_dim)
            contig = tuple([torch.randn(shape, dtype=dt, device=ctx.device, generator=ctx.gen)
                            for _ in range(cfg.num_hidden_layers)] for _ in "kv")
        ids = torch.randint(0, cfg.vocab_size, (batch,), generator=ctx.gen, device=ctx.device)
        step, timer = capture_step(lambda: plain.step(ids, *contig, context).argmax(-1), ctx.device,
                                   not ctx.args.no_graphs)
        return ctx.timed(row | {"timer": timer}, time_steps(step, steps=ctx.plan["steps"]), nbytes)
    except Exception as exc:  # noqa: BLE001
        return row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}


def measure_hf(ctx, model_name, model, weights, impl: str, batch: int, context: int) -> dict:
    """transformers `generate` (static cache) from random prompts of `context` tokens."""
    compile_ = impl == "hf_generate_compile"
    cfg, dt = model.config, ctx.float_dtype
    base = {"model": model_name, "weights": dtype_name(dt), "kv_dtype": dtype_name(dt), "batch": batch,
            "context": context, "act_dtype": dtype_name(dt), "impl": impl,
            "label": "HF generate" + (" compiled" if compile_ else "")}
    row = ctx.row(**base)
    tokens = ctx.plan["hf_tokens"]
    chunk = max(64, ctx.args.hf_prefill_chunk // batch)  # prefill tokens per chunk, all sequences together
    cache = batch * (context + tokens) * kv_bytes_per_token(cfg, dt)
    mask = batch * min(context, chunk) * (context + tokens)  # bool mask of one prefill chunk
    ok, why = ctx.fits(cache + 2 * mask + batch * min(context, chunk) * 4 * cfg.intermediate_size * dt.itemsize)
    if not ok:
        ctx.skip(base, why)
        return None
    try:
        hf = peers.hf_model(model, dt)
        result = peers.hf_generate_steps(hf, batch=batch, context=context, new_tokens=tokens, compile=compile_,
                                         prefill_chunk=chunk, seed=ctx.args.seed)
        del hf
        steps = result["step_s"][HF_WARMUP_STEPS[impl]:]
        note = f"static cache, {tokens} new tokens, first {HF_WARMUP_STEPS[impl]} decode steps not timed"
        if context > chunk:
            note += f", prefill in chunks of {chunk}"
        if compile_:
            note += f", dynamo graphs compiled: {result['compiled_graphs']}"
            if result["compiled_graphs"] == 0:
                row["reason"] = "transformers did not compile the decode step here"
        timing = summarize([s * 1e6 for s in steps])
        nbytes = step_bytes(weights, cfg, batch=batch, context=context, kv_dtype=dt)
        return ctx.timed(row | {"timer": "wall clock per generated token", "prefill_s": result["prefill_s"],
                                "peer_note": note}, timing, nbytes)
    except Exception as exc:  # noqa: BLE001
        return row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        release()


def measure_engine(ctx, model_name, model, weights, wname: str, kv: str, batch: int, context: int) -> dict | None:
    """fastcot's engine as users run it: `LLM.from_model` around the same model, `generate` of
    `batch` random prompts of `context` tokens (a real prefill), `--engine-tokens` new tokens
    each, greedy, ignore_eos. tokens/s: the sum over requests of the engine's own
    `metrics.decode_tokens_per_s` (tokens after the first / time from first token to finish)."""
    from fastcot.models import load_tokenizer

    fastcot, cfg, dev = ctx.fastcot, model.config, ctx.device
    tokens = ctx.plan["engine_tokens"]
    kv_dtype = ctx.kv_dtype(kv)
    base = {"model": model_name, "weights": ctx.weights_name(wname), "kv_dtype": dtype_name(kv_dtype),
            "batch": batch, "context": context, "act_dtype": dtype_name(ctx.float_dtype), "impl": "fastcot_engine",
            "label": "fastcot LLM.generate"}
    length = context + tokens + BLOCK_SIZE
    blocks = batch * (-(-length // BLOCK_SIZE) + 1)
    ok, why = ctx.fits(blocks * BLOCK_SIZE * kv_bytes_per_token(cfg, kv_dtype))
    if not ok:
        ctx.skip(base, why)
        return None
    row = ctx.row(**base)
    try:
        llm = fastcot.LLM.from_model(model, load_tokenizer(PRESETS[model_name]), device=dev,
                                     kv_cache_dtype="fp8" if kv == "fp8" else "auto", max_model_len=length,
                                     max_num_seqs=batch, block_size=BLOCK_SIZE, num_kv_blocks=blocks,
                                     seed=ctx.args.seed)
        gen = torch.Generator().manual_seed(ctx.args.seed + context)
        params = fastcot.SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        # Warm-up: CUDA-graph capture for every batch bucket and kernel autotuning, not timed.
        warm = [torch.randint(0, 256, (8,), generator=gen).tolist() for _ in range(batch)]
        llm.generate(warm, fastcot.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        prompts = [torch.randint(0, 256, (context,), generator=gen).tolist() for _ in range(batch)]
        outs = llm.generate(prompts, params, use_tqdm=False)
        del llm
        if any(len(o.outputs[0].token_ids) != tokens for o in outs):
            raise RuntimeError(f"a request generated other than {tokens} tokens")
        rates = [o.metrics.decode_tokens_per_s for o in outs]
        if any(r is None for r in rates):
            raise RuntimeError("the engine reported no decode rate")
        step_us = 1e6 * batch / sum(rates)
        ttft = max(o.metrics.time_to_first_token for o in outs)
        # Decode runs from `context` to `context + tokens`: the mean step sees half the new tokens.
        nbytes = step_bytes(weights, cfg, batch=batch, context=context + tokens // 2, kv_dtype=kv_dtype)
        timing = {"steps": tokens - 1, "step_median_us": step_us, "step_p20_us": None, "step_p80_us": None}
        note = (f"{tokens} new tokens per request after a {context}-token prompt; step time = batch / summed "
                "decode rates (a mean, no spread); bytes at the mean context")
        return ctx.timed(row | {"timer": "engine metrics", "prefill_s": ttft, "peer_note": note}, timing, nbytes)
    except Exception as exc:  # noqa: BLE001
        return row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        release()


def effective_context(config, context: int, plan) -> int:
    """A context whose prompt + generated tokens fit the model's window (128k = 131072 would not):
    the window less the HF or engine tokens and a block, rounded up to 64 (130880 by default)."""
    reserve = -(-(max(plan["hf_tokens"], plan["engine_tokens"]) + BLOCK_SIZE + 2) // 64) * 64
    return min(context, config.max_position_embeddings - reserve)


def run_model(ctx, model_name: str) -> list[dict]:
    from fastcot.models import load_config, load_model

    preset, plan, dev = PRESETS[model_name], ctx.plan, ctx.device
    config = load_config(preset)
    shapes = [(1, effective_context(config, c, plan)) for c in plan["context"]]
    shapes += [(b, effective_context(config, c, plan)) for b in plan["batch"] for c in plan["batch_context"]]
    rows = []
    for wname in plan["weights"]:
        quant = "int4" if wname == "int4" else None
        meta = load_model(preset, dtype=ctx.float_dtype, device="meta", quantization=quant)
        weights = weight_bytes(meta)
        embed = 0 if config.tie_word_embeddings else meta.model.embed_tokens.weight.nbytes
        need = weights["decoder"] + weights["lm_head"] + embed
        del meta
        what = {"model": model_name, "weights": ctx.weights_name(wname)}
        ok, why = ctx.fits(need)
        if not ok:
            ctx.skip(what, why)
            continue
        print(f"{model_name} {ctx.weights_name(wname)}: loading {preset}", file=sys.stderr, flush=True)
        model = load_model(preset, dtype=ctx.float_dtype, device=dev, quantization=quant, seed=ctx.args.seed)
        plain = None
        if not ctx.args.no_check or (wname == "float" and "sdpa" in plan["peers"]):
            ok, why = ctx.fits(weights["dequantized"])
            if ok:
                plain = peers.PlainDecoder(model, ctx.float_dtype)
            else:
                ctx.skip(what | {"impl": "check"}, "no memory for dequantized weights: " + why)
        for batch, context in shapes:
            for kv in plan["kv_dtype"]:
                if ctx.time_left() <= 0:
                    ctx.skip(what | {"batch": batch, "context": context, "kv": kv}, "time budget spent")
                    continue
                print(f"  B={batch} context={ctx_label(context)} KV {kv}", file=sys.stderr, flush=True)
                rows += measure_fastcot(ctx, model_name, model, weights, wname, kv, batch, context, plain)
        del plain
        release()
        if wname in plan["engine"]:
            rows += run_engine(ctx, model_name, model, weights, wname, shapes, what)
        if wname == "float":
            rows += run_hf(ctx, model_name, model, weights, shapes)
        del model
        release()
    return rows


def run_engine(ctx, model_name, model, weights, wname, shapes, what) -> list[dict]:
    rows = []
    for batch, context in shapes:
        if batch * context > ctx.plan["engine_max_prefill"]:
            continue
        for kv in ctx.plan["kv_dtype"]:
            where = what | {"impl": "fastcot_engine", "batch": batch, "context": context, "kv": kv}
            if ctx.time_left() <= 0:
                ctx.skip(where, "time budget spent")
                continue
            print(f"  engine B={batch} context={ctx_label(context)} KV {kv}", file=sys.stderr, flush=True)
            row = measure_engine(ctx, model_name, model, weights, wname, kv, batch, context)
            if row is not None:
                rows.append(row)
    return rows


def run_hf(ctx, model_name, model, weights, shapes) -> list[dict]:
    impls = [i for p, i in (("hf", "hf_generate"), ("hf-compile", "hf_generate_compile")) if p in ctx.plan["peers"]]
    reason = peers.hf_unavailable()
    rows = []
    for impl in impls:
        for batch, context in shapes:
            what = {"model": model_name, "impl": impl, "batch": batch, "context": context}
            if reason:
                ctx.skip(what, reason)
            elif ctx.time_left() < (120 if impl == "hf_generate_compile" else 10):
                ctx.skip(what, "time budget spent")
            else:
                print(f"  {impl} B={batch} context={ctx_label(context)}", file=sys.stderr, flush=True)
                row = measure_hf(ctx, model_name, model, weights, impl, batch, context)
                if row is not None:
                    rows.append(row)
        if impl == "hf_generate_compile":
            torch._dynamo.reset()
    return rows


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tp != 1:
        import e2e_tp

        return e2e_tp.run(args, common, _sizes)
    device = common.pick_device(args.device, smoke=args.smoke)
    tiny = device.type == "cpu" or args.smoke  # `--smoke --device cuda`: the tiny plan on the GPU
    plan = run_plan(args, tiny)
    fastcot, env = common.start_run(device, args.seed)
    ctx = Context(args, plan, fastcot, device, env, tiny)
    common.print_env(env)
    availability = {"fastcot": None, "torch_sdpa": None if "sdpa" in plan["peers"] else "not asked for"}
    hf_reason = peers.hf_unavailable()
    for peer, impl in (("hf", "hf_generate"), ("hf-compile", "hf_generate_compile")):
        availability[impl] = hf_reason or (None if peer in plan["peers"] else "not asked for")
    for impl in ("torch_sdpa", "hf_generate", "hf_generate_compile"):
        if availability[impl] is None and "float" not in plan["weights"]:
            availability[impl] = "needs --weights float: the peers run on the float weights"
    availability["fastcot_engine"] = None if plan["engine"] else "not asked for"
    if device.type == "cpu" and "hf-compile" in plan["peers"]:
        print("note: transformers compiles generate only on accelerators; on CPU the compiled row runs eagerly",
              file=sys.stderr)
    for impl, why in availability.items():
        if why:
            print(f"{impl}: n/a ({why})")
    print(f"plan: models {plan['models']}, weights {plan['weights']}, KV {plan['kv_dtype']}, B=1 contexts "
          f"{[ctx_label(c) for c in plan['context']]}, batches {plan['batch']} at "
          f"{[ctx_label(c) for c in plan['batch_context']]}, "
          f"peers {plan['peers'] or 'none'}, {plan['steps']} timed steps per row")

    rows = []
    for model_name in plan["models"]:
        rows += run_model(ctx, model_name)

    print()
    print(format_rows(rows))
    print("tok/s: batch / median step time (launch to token ids on the host); ±%: half the p20-p80 spread; "
          "GB/step: fewest bytes a step moves (weights once, context+1 cached tokens per sequence, new KV, logits); "
          "%roof: GB/s over the copy bandwidth measured in this run; roof tok/s: tokens/s at that bandwidth; "
          "check: max |logits - plain PyTorch| / max |logits| on the same cache (! = over tolerance)")
    failed = [r for r in rows if r["status"] in ("wrong", "error")]
    for r in failed:
        print(f"{r['status'].upper()}: {r['impl']} {r['model']} B={r['batch']} {ctx_label(r['context'])} "
              f"{r['weights']}/{r['kv_dtype']}: {r['reason'] or ''}"
              + (f" rel err {r['check_rel_err']:.3g} > {r['check_tol']}" if r["status"] == "wrong" else ""))
    for s in ctx.skipped:
        print(f"skipped: {s}")
    print()
    if tiny:
        targets = {"judged": False, "why": "tiny CPU/smoke run: " + common.CPU_LABEL}
        print(f"targets: not judged ({targets['why']})")
    else:
        results = judge_targets(rows, env["device_name"])
        targets = {"judged": True, "results": results}
        print(format_targets(results))

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config |= {"run_plan": plan, "tiny": tiny, "block_size": BLOCK_SIZE, "float_dtype": dtype_name(ctx.float_dtype),
               "presets": {m: PRESETS[m] for m in plan["models"]}, "hf_warmup_steps": HF_WARMUP_STEPS,
               "check_rtol": {dtype_name(k): v for k, v in CHECK_RTOL.items()}}
    path = common.write_results(family=FAMILY, env=env, rows=[{k: r.get(k) for k in ROW_KEYS} for r in sort_rows(rows)],
                                out_dir=args.out_dir, extra={"config": config, "implementations": availability,
                                                             "skipped": ctx.skipped, "targets": targets})
    print(f"\nwrote {path}")
    return 1 if any(r["status"] in ("wrong", "error") and r["impl"] == "fastcot" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
