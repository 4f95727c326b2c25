"""Paged attention microbenchmark: fastcot decode (and prefill) vs SDPA on a contiguous cache.

Decode: for every (batch, context, block size, KV dtype) it times `fastcot.ops.paged_decode_attention`
per backend (triton; cuda, the csrc kernel, when fastcot._C loaded and a GPU is present) on a cache whose physical blocks are shuffled, and, in the same run, PyTorch's
`F.scaled_dot_product_attention` on a contiguous `[B, Hkv, L, D]` cache holding the same
numbers. Every fastcot row is first checked against SDPA in float32 on a few sequences.
`--prefill` adds chunked prefill (2k new tokens onto 0 or 8k cached) against causal SDPA.
Shared-prefix rows (`_shared_prefix.py`; `--no-shared-prefix` skips them) decode n = 8, 16, 32
forked samples of a 4k and a 32k prompt with plain and with shared-prefix (cascade) decode,
with the bytes each reads per step.
Without a GPU (or with --smoke) it runs tiny shapes on CPU so the script cannot rot.

    python benchmarks/bench_paged_attention.py                  # everything that fits (budget ~8 min on an H100)
    python benchmarks/bench_paged_attention.py --quick          # GPU subset: the target rows
    python benchmarks/bench_paged_attention.py --batch 1 --context 32k,128k --kv-dtype fp16,fp8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import _shared_prefix as shared_prefix

FAMILY = "paged_attention"
KI = 1024

GPU = {"batch": (1, 8, 64, 256), "context": (KI, 8 * KI, 32 * KI, 128 * KI), "block_size": (16, 64),
       "kv_dtype": ("fp16", "bf16", "fp8"), "heads": (32, 8, 128)}
QUICK = {"batch": (1, 64), "context": (8 * KI, 32 * KI, 128 * KI), "block_size": (16,), "kv_dtype": ("fp16", "fp8")}
# CPU: odd contexts leave partly filled last blocks; heads keep Llama's 4:1 grouping.
CPU = {"batch": (1, 4), "context": (37, 300), "block_size": (16, 64), "kv_dtype": ("fp32", "fp8"), "heads": (8, 2, 32)}
PREFILL = {"new_tokens": 2048, "cached": (0, 8 * KI)}
CPU_PREFILL = {"new_tokens": 24, "cached": (0, 40)}

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}
FP8_MAX = 448.0
# Per-tensor fp8 scales (stored = value / scale); distinct, so a kernel swapping them is caught.
FP8_SCALES = (6.0 / FP8_MAX, 5.0 / FP8_MAX)
# Floors of the error tolerance, relative to max|reference|, by the dtype of q (= of a float
# cache). fp8 rows are checked against the dequantized cache (fp8 rounding is not the
# kernel's error), so they get the tolerance of their q dtype.
RTOL = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-2}

# (target, batch, context, minimum % of copy bandwidth), judged at fp16 KV, 32/8 heads, D 128.
BW_TARGETS = [("B=1 32k", 1, 32 * KI, 80.0), ("B=1 128k", 1, 128 * KI, 80.0), ("B=64 8k", 64, 8 * KI, 80.0)]
FP8_TARGET = ("fp8 vs fp16, context >= 32k", 32 * KI, 1.7)

ROW_KEYS = ("section", "batch", "context", "new_tokens", "block_size", "kv_dtype", "q_dtype", "num_q_heads",
            "num_kv_heads", "head_dim", "impl", "label", "status", "reason", "median_us", "p20_us", "p80_us",
            "timer", "n_copies", "bytes", "gbps", "tflops", "pct_copy_bw", "max_abs_err", "tol",
            "speedup_vs_sdpa", "speedup_fp8_vs_float_kv", "peer_note", "model_pct_copy_bw", "model_note")


def _sizes(text: str) -> list[int]:
    return [int(t[:-1]) * KI if t.lower().endswith("k") else int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=_sizes, default=None, help="comma list of batch sizes (GPU default 1,8,64,256)")
    p.add_argument("--context", type=_sizes, default=None, help="comma list of cached tokens per sequence, "
                   "k = 1024 (GPU default 1k,8k,32k,128k)")
    p.add_argument("--block-size", type=_sizes, default=None, help="comma list of KV block sizes (default 16,64)")
    p.add_argument("--kv-dtype", default=None, help="comma list of fp16, bf16, fp8, fp32 "
                   "(GPU default fp16,bf16,fp8; CPU fp32,fp8)")
    p.add_argument("--heads", default=None, help="Hq/Hkv/D, e.g. 32/8/128 (GPU default); CPU 8/2/32")
    p.add_argument("--quick", action="store_true", help="GPU subset: B=1,64 x 8k,32k,128k, block 16, fp16 and fp8")
    p.add_argument("--prefill", action="store_true", help="also time chunked prefill: 2k new tokens onto 0/8k cached")
    p.add_argument("--no-shared-prefix", action="store_true",
                   help="skip the shared-prefix decode rows (n = 8, 16, 32 samples on a 4k/32k prompt)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes even when a GPU is present")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--reps", type=int, default=None, help="timed samples (default 15; 3 when interpreted)")
    p.add_argument("--timer", choices=("graph", "do_bench"), default="graph", help="CUDA timing method")
    p.add_argument("--mem-fraction", type=float, default=0.7,
                   help="skip a layout that needs more than this fraction of free GPU memory (default 0.7)")
    p.add_argument("--max-rotation-gib", type=float, default=8.0, help="memory cap for L2-rotation copies")
    p.add_argument("--out-dir", type=Path, default=common.DEFAULT_OUT_DIR, help="where the JSON/CSV go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-model", action="store_true",
                   help="GPU: skip the static model's predicted %%bw printed next to the measured one (target rows)")
    return p.parse_args(argv)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _elem(dtype) -> int:
    return torch.finfo(dtype).bits // 8


def dtype_name(dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def _ctx_label(n: int) -> str:
    return f"{n // KI}k" if n >= KI and n % KI == 0 else str(n)


# ---------------------------------------------------------------------------------------------
# Cache contents and layouts


@dataclass(frozen=True)
class Heads:
    q: int
    kv: int
    dim: int


class Content:
    """Keys and values of sequence `s`, `[L, Hkv, D]`, random but regenerated bit for bit on
    demand: the paged and the contiguous layout then hold the same numbers without ever
    being in memory together, and the correctness check rebuilds just the sequences it needs."""

    def __init__(self, ctx, length: int, dtype, salt: int = 0):
        self.ctx, self.length, self.dtype, self.salt = ctx, length, dtype, salt

    def kv(self, seq: int):
        g = torch.Generator(device=self.ctx.device)
        g.manual_seed(self.ctx.seed * 1_000_003 + self.salt * 7_919 + seq)
        shape = (self.length, self.ctx.heads.kv, self.ctx.heads.dim)
        return tuple(torch.randn(shape, generator=g, device=self.ctx.device, dtype=self.dtype) for _ in "kv")


def quantize_fp8(x, scale: float):
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def build_paged(content: Content, n_seqs: int, block_size: int, kv_dtype, scales=(1.0, 1.0), seed: int = 0):
    """Sequences `0..n_seqs-1` in shuffled physical blocks: `(k_cache, v_cache, block_tables)`.

    Caches are `[n_seqs * blocks_per_seq, block_size, Hkv, D]`; the slots past a sequence's
    end hold NaN, so a kernel that lets them leak into its output is caught."""
    length, dev = content.length, content.ctx.device
    heads = content.ctx.heads
    per_seq = _cdiv(length, block_size)
    n_blocks = n_seqs * per_seq
    gen = torch.Generator().manual_seed(seed)
    tables = torch.randperm(n_blocks, generator=gen).view(n_seqs, per_seq).to(torch.int32).to(dev)
    # All-ones bytes are NaN in fp32, fp16, bf16 and e4m3fn alike.
    caches = [torch.empty(n_blocks, block_size, heads.kv, heads.dim, dtype=kv_dtype, device=dev) for _ in "kv"]
    for c in caches:
        c.view(torch.uint8).fill_(0xFF)
    rows = [c.view(torch.uint8).view(n_blocks * block_size, heads.kv, -1) for c in caches]
    offsets = torch.arange(block_size, device=dev)
    for s in range(n_seqs):
        slots = (tables[s].long()[:, None] * block_size + offsets).flatten()[:length]
        for row, x, scale in zip(rows, content.kv(s), scales):
            stored = quantize_fp8(x, scale) if kv_dtype == torch.float8_e4m3fn else x.to(kv_dtype)
            row.index_copy_(0, slots, stored.view(torch.uint8))
    return caches[0], caches[1], tables


def build_contiguous(content: Content, n_seqs: int, repeat: int = 1):
    """`[n_seqs, Hkv * repeat, L, D]` K and V; `repeat` > 1 expands KV heads for an SDPA without GQA."""
    heads = content.ctx.heads
    shape = (n_seqs, heads.kv * repeat, content.length, heads.dim)
    k, v = (torch.empty(shape, dtype=content.dtype, device=content.ctx.device) for _ in "kv")
    for s in range(n_seqs):
        for dst, x in zip((k, v), content.kv(s)):
            dst[s] = x.transpose(0, 1).repeat_interleave(repeat, dim=0)
    return k, v


def sdpa_supports_gqa() -> bool:
    q, k = torch.zeros(1, 2, 1, 16), torch.zeros(1, 1, 3, 16)
    try:
        F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
    except TypeError:
        return False
    return True


def lower_right_causal_mask(n_q: int, n_k: int, device):
    """Query i of the last `n_q` positions sees keys `<= n_k - n_q + i` (prefill onto a cache)."""
    try:
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(n_q, n_k), "causal_lower_right"
    except ImportError:
        pos = torch.arange(n_k, device=device)
        return pos[None, :] <= (pos[-n_q:])[:, None], "boolean mask (no causal_lower_right in this torch)"


# ---------------------------------------------------------------------------------------------
# Correctness


def decode_reference(q, k, v, scale: float):
    """fp32 SDPA for one sequence: q `[Hq, D]`, k/v `[L, Hkv, D]` -> `[Hq, D]`.

    The `Hq / Hkv` query heads of a group become that KV head's query rows, which is exact
    for one decode token and needs neither `enable_gqa` nor repeated K/V."""
    hkv, d = k.shape[1], k.shape[2]
    qg = q.float().reshape(1, hkv, -1, d)
    out = F.scaled_dot_product_attention(qg, k.float().transpose(0, 1)[None], v.float().transpose(0, 1)[None],
                                         scale=scale)
    return out.reshape(-1, d)


def tolerance(err_torch: float, ref_absmax: float, q_dtype: str) -> float:
    """The project's rule: at most 2x torch's error in the same dtype, floored at the dtype's
    tolerance x the output's magnitude (torch's own error can be ~0 by luck)."""
    return max(2.0 * err_torch, RTOL[q_dtype] * ref_absmax)


# ---------------------------------------------------------------------------------------------
# Measurement


class Context:
    def __init__(self, args, fastcot, device, env, tiny):
        self.args, self.fastcot, self.device, self.env, self.tiny = args, fastcot, device, env, tiny
        self.seed = args.seed
        hq, hkv, d = (int(x) for x in args.heads.split("/")) if args.heads else (CPU if tiny else GPU)["heads"]
        if hq % hkv:
            raise SystemExit(f"--heads: Hq must be a multiple of Hkv, got {hq}/{hkv}")
        self.heads = Heads(hq, hkv, d)
        self.float_dtype = torch.float32 if device.type == "cpu" else torch.float16
        self.gqa = "enable_gqa" if sdpa_supports_gqa() else "repeat_interleave"
        self.backends = probe_backends(fastcot, device, self)
        self.available = [b for b, why in self.backends.items() if why is None]
        interpreted = device.type == "cpu" and self.backends.get("triton", "") is None
        self.reps = args.reps or (3 if interpreted else 15)
        self.copy_gbps = env["copy_bandwidth"]["gbps"]
        self.rotation_budget = common.rotation_budget_bytes(device, args.max_rotation_gib)
        self.skipped: list[dict] = []

    def n_copies(self, bytes_per_copy: int) -> int:
        return common.rotation_count(bytes_per_copy, self.env["l2_bytes"], max_total_bytes=self.rotation_budget)

    def fits(self, what: dict, nbytes: int) -> bool:
        """True when `nbytes` fits in --mem-fraction of free GPU memory; records a skip otherwise."""
        if self.device.type != "cuda":
            return True
        common.free_memory()
        free, _ = torch.cuda.mem_get_info(self.device)
        if nbytes <= self.args.mem_fraction * free:
            return True
        self.skipped.append(what | {"need_gib": round(nbytes / (1 << 30), 2), "free_gib": round(free / (1 << 30), 2)})
        print(f"  skipped {what}: needs {nbytes / (1 << 30):.1f} GiB, "
              f"{self.args.mem_fraction:.0%} of free is {self.args.mem_fraction * free / (1 << 30):.1f} GiB",
              file=sys.stderr)
        return False

    def row(self, **fields) -> dict:
        base = {"num_q_heads": self.heads.q, "num_kv_heads": self.heads.kv, "head_dim": self.heads.dim}
        return {key: (base | fields).get(key) for key in ROW_KEYS}

    def timed(self, row: dict, call, n_copies: int, nbytes: int, flops: int) -> dict:
        timing = common.time_fn(call, n_copies=n_copies, device=self.device, reps=self.reps, method=self.args.timer)
        row |= {"status": row["status"] or "ok", "n_copies": n_copies} | common.timing_fields(timing)
        return row | common.bandwidth_fields(nbytes=nbytes, flops=flops, median_us=timing.median_us,
                                             copy_gbps=self.copy_gbps)


def probe_backends(fastcot, device, ctx) -> dict:
    """Which fastcot backends serve paged attention here: {backend: None (ok) or why not}.

    Only `BackendError` (and a missing op) make a backend unavailable; any other exception
    leaves it in, so its rows fail loudly instead of disappearing."""
    candidates = ("triton", "cuda") if device.type == "cuda" else ("torch", "triton", "cuda")
    if not hasattr(fastcot.ops, "paged_decode_attention"):
        return {b: "fastcot.ops has no paged_decode_attention in this checkout" for b in candidates}
    h, dt = ctx.heads, ctx.float_dtype
    k = torch.zeros(2, 16, h.kv, h.dim, dtype=dt, device=device)
    q = torch.zeros(1, h.q, h.dim, dtype=dt, device=device)
    tables = torch.tensor([[1, 0]], dtype=torch.int32, device=device)
    lens = torch.tensor([20], dtype=torch.int32, device=device)
    status = {}
    for backend in candidates:
        try:
            with fastcot.backend(backend):
                fastcot.ops.paged_decode_attention(q, k, k, tables, lens)
            status[backend] = None
        except fastcot.ops.BackendError as exc:
            status[backend] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a crash is a finding: keep the backend, its rows will say why
            status[backend] = None
            print(f"fastcot_{backend}: probe crashed ({type(exc).__name__}: {exc}); rows will report it",
                  file=sys.stderr)
    return status


def _error(exc: Exception, prefix: str = "") -> dict:
    return {"status": "error", "reason": f"{prefix}{type(exc).__name__}: {exc}"[:300]}


def _verdict(err: float, tol: float) -> dict:
    return {"max_abs_err": err, "tol": tol, "status": "ok" if err <= tol else "wrong"}


def time_fastcot(ctx, base: dict, op_name: str, bind, check, *, n_copies: int, nbytes: int, flops: int) -> list[dict]:
    """For every available backend: check `op_name`'s first output, then time it.

    `bind(op)` turns the op (already inside `fastcot.backend(...)`) into `call(i)` on rotation
    copy i; `check(out)` returns the row's error, tolerance and status."""
    rows = []
    for backend in ctx.available:
        if not _has_kernel(ctx.fastcot, op_name, backend):
            continue  # e.g. cuda has a decode kernel but no prefill one
        def op(*args, backend=backend, **kwargs):
            with ctx.fastcot.backend(backend):
                return getattr(ctx.fastcot.ops, op_name)(*args, **kwargs)

        call = bind(op)
        row = ctx.row(**base, impl=f"fastcot_{backend}", label=f"fastcot {backend}")
        try:
            row |= check(call(0))
            with index_checks_off():
                row = ctx.timed(row, call, n_copies, nbytes, flops)
        except Exception as exc:  # noqa: BLE001 - one broken backend must not end the run
            row |= _error(exc)
        rows.append(row)
    return rows


def _has_kernel(fastcot, op_name: str, backend: str) -> bool:
    implementations = getattr(getattr(fastcot.ops, "_backend", None), "IMPLEMENTATIONS", {})
    return backend in implementations.get(op_name, (backend,))


@contextlib.contextmanager
def index_checks_off():
    """fastcot validates block tables against seq_lens with a host sync on eager calls (never
    under graph capture); the timed calls skip it, as a graph-replayed engine step does."""
    saved = os.environ.get("FASTCOT_INDEX_CHECKS")
    os.environ["FASTCOT_INDEX_CHECKS"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["FASTCOT_INDEX_CHECKS"]
        else:
            os.environ["FASTCOT_INDEX_CHECKS"] = saved


def measure_decode_peer(ctx, batch: int, context: int, dtype) -> list[dict]:
    """SDPA on a contiguous `[B, Hkv, L, D]` cache (GQA by `enable_gqa`, else expanded heads)."""
    h, name = ctx.heads, dtype_name(dtype)
    repeat = 1 if ctx.gqa == "enable_gqa" else h.q // h.kv
    nbytes = 2 * batch * (context * h.kv * repeat + h.q) * h.dim * _elem(dtype)  # K, V; q, out
    n_copies = ctx.n_copies(nbytes)
    row = ctx.row(section="decode", batch=batch, context=context, new_tokens=1, kv_dtype=name, q_dtype=name,
                  impl="sdpa", label=f"SDPA {name}", peer_note=ctx.gqa + ("" if repeat == 1 else f" (x{repeat})"))
    if not ctx.fits({"impl": "sdpa", "batch": batch, "context": context, "kv_dtype": name},
                    n_copies * nbytes + 8 * context * h.kv * h.dim * _elem(dtype)):
        return []
    try:
        k, v = build_contiguous(Content(ctx, context, dtype), n_copies * batch, repeat)
        q = torch.randn(n_copies, batch, h.q, 1, h.dim, device=ctx.device).to(dtype)
        kw = {"enable_gqa": True} if repeat == 1 else {}

        def call(i):
            return F.scaled_dot_product_attention(q[i], k[i * batch:(i + 1) * batch], v[i * batch:(i + 1) * batch], **kw)

        row = ctx.timed(row, call, n_copies, nbytes, 4 * batch * h.q * context * h.dim)
    except Exception as exc:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
        row |= _error(exc)
    common.free_memory()
    return [row]


def measure_decode(ctx, batch: int, context: int, block_size: int, kv: str) -> list[dict]:
    """fastcot paged decode per backend on shuffled blocks, each checked before it is timed."""
    h, kv_dtype, fp8 = ctx.heads, DTYPES[kv], kv == "fp8"
    content = Content(ctx, context, ctx.float_dtype if fp8 else kv_dtype)
    q_dtype = content.dtype
    scales = FP8_SCALES if fp8 else (1.0, 1.0)
    per_seq = _cdiv(context, block_size)
    # K and V as read; q and out; block table and seq_lens.
    nbytes = (2 * batch * context * h.kv * h.dim * _elem(kv_dtype) + 2 * batch * h.q * h.dim * _elem(q_dtype)
              + 4 * batch * (per_seq + 1))
    n_copies = ctx.n_copies(nbytes)
    base = {"section": "decode", "batch": batch, "context": context, "new_tokens": 1, "block_size": block_size,
            "kv_dtype": kv, "q_dtype": dtype_name(q_dtype)}
    pool_bytes = 2 * n_copies * batch * per_seq * block_size * h.kv * h.dim * _elem(kv_dtype)
    if not ctx.available or not ctx.fits({"impl": "fastcot", "batch": batch, "context": context,
                                          "block_size": block_size, "kv_dtype": kv},
                                         pool_bytes + 16 * context * h.kv * h.dim * 4):
        return []
    try:
        k_cache, v_cache, tables = build_paged(content, n_copies * batch, block_size, kv_dtype, scales,
                                               seed=ctx.seed + context + block_size)
        tables = tables.view(n_copies, batch, per_seq)
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device=ctx.device)
        q = torch.randn(n_copies, batch, h.q, h.dim, device=ctx.device).to(q_dtype)
        outs = torch.empty_like(q)
        check = decode_checker(ctx, content, q[0], scales if fp8 else None, base["q_dtype"])
    except Exception as exc:  # noqa: BLE001
        return [ctx.row(**base, impl=f"fastcot_{b}", label=f"fastcot {b}") | _error(exc, "setup: ")
                for b in ctx.available]

    def bind(op):
        return lambda i: op(q[i], k_cache, v_cache, tables[i], seq_lens, k_scale=scales[0], v_scale=scales[1],
                            out=outs[i])

    return time_fastcot(ctx, base, "paged_decode_attention", bind, check, n_copies=n_copies, nbytes=nbytes,
                        flops=4 * batch * h.q * context * h.dim)


def decode_checker(ctx, content: Content, q, fp8_scales, q_dtype: str):
    """`check(out)` against fp32 SDPA on sequences 0, B/2 and B-1 (all of `out` must be finite).

    The tolerance follows the project's rule: 2x torch's own error (SDPA in q's dtype on the
    same numbers), floored at RTOL[q dtype] x max|reference|."""
    batch, scale = q.shape[0], ctx.heads.dim ** -0.5
    seqs = sorted({0, batch // 2, batch - 1})
    refs, err_torch = [], 0.0
    for s in seqs:
        k, v = content.kv(s)
        if fp8_scales:  # what the cache really holds: the fp8 numbers times their scale
            k, v = (quantize_fp8(x, sc).float() * sc for x, sc in zip((k, v), fp8_scales))
        refs.append(decode_reference(q[s], k, v, scale))
        same_dtype = sdpa_decode_one(ctx, q[s], k.to(q.dtype), v.to(q.dtype), scale)
        err_torch = max(err_torch, (same_dtype.float() - refs[-1]).abs().max().item())
    tol = tolerance(err_torch, max(r.abs().max().item() for r in refs), q_dtype)

    def check(out):
        result = _verdict(max((out[s].float() - r).abs().max().item() for s, r in zip(seqs, refs)), tol)
        bad = (~torch.isfinite(out.float())).flatten(1).any(dim=1).nonzero().flatten().tolist()
        if bad:
            result |= {"status": "wrong", "reason": f"non-finite output for sequences {bad[:8]}"}
        return result
    return check


def sdpa_decode_one(ctx, q, k, v, scale: float):
    """The peer's computation for one sequence, in q's dtype: q `[Hq, D]`, k/v `[L, Hkv, D]`."""
    repeat = 1 if ctx.gqa == "enable_gqa" else q.shape[0] // k.shape[1]
    kd, vd = (x.transpose(0, 1)[None].repeat_interleave(repeat, dim=1) for x in (k, v))
    kw = {"enable_gqa": True} if repeat == 1 else {}
    return F.scaled_dot_product_attention(q[None, :, None], kd, vd, scale=scale, **kw).reshape(q.shape)


def measure_prefill(ctx, cached: int, new_tokens: int, block_size: int) -> list[dict]:
    """One sequence: `new_tokens` queries onto `cached` earlier tokens, causal, vs SDPA with a
    lower-right causal mask on the same contiguous K/V; both checked against fp32 SDPA."""
    h, dtype, dev = ctx.heads, ctx.float_dtype, ctx.device
    name, length = dtype_name(dtype), cached + new_tokens
    content = Content(ctx, length, dtype, salt=1)
    kv_bytes = 2 * length * h.kv * h.dim * _elem(dtype)
    io_bytes = 2 * new_tokens * h.q * h.dim * _elem(dtype)
    flops = 4 * h.q * h.dim * (new_tokens * cached + new_tokens * (new_tokens + 1) // 2)
    n_copies = ctx.n_copies(kv_bytes + io_bytes)
    q = torch.randn(n_copies, new_tokens, h.q, h.dim, device=dev).to(dtype)
    mask, mask_note = lower_right_causal_mask(new_tokens, length, dev) if cached else (None, "is_causal")
    causal = {"attn_mask": mask} if cached else {"is_causal": True}
    k0, v0 = (x.float().transpose(0, 1)[None].repeat_interleave(h.q // h.kv, dim=1) for x in content.kv(0))
    ref = F.scaled_dot_product_attention(q[0].float().transpose(0, 1)[None], k0, v0, scale=h.dim ** -0.5, **causal)
    ref = ref[0].transpose(0, 1)  # [T, Hq, D]
    del k0, v0
    base = {"section": "prefill", "batch": 1, "context": cached, "new_tokens": new_tokens, "kv_dtype": name,
            "q_dtype": name}
    peer = ctx.row(**base, impl="sdpa", label=f"SDPA {name}", peer_note=f"{mask_note}, {ctx.gqa}")
    peer, err_torch = prefill_peer(ctx, peer, content, q, causal, ref, n_copies, kv_bytes, io_bytes, flops)
    common.free_memory()
    if not ctx.available:
        return [peer]
    k_cache, v_cache, tables = build_paged(content, n_copies, block_size, dtype, seed=ctx.seed + length)
    cu_seqlens = torch.tensor([0, new_tokens], dtype=torch.int32, device=dev)
    seq_lens = torch.tensor([length], dtype=torch.int32, device=dev)
    outs = torch.empty_like(q)
    tol = tolerance(err_torch, ref.abs().max().item(), name)

    def bind(op):
        return lambda i: op(q[i], k_cache, v_cache, tables[i:i + 1], cu_seqlens, seq_lens, out=outs[i])

    return [peer] + time_fastcot(ctx, base | {"block_size": block_size}, "paged_prefill_attention", bind,
                                 lambda out: _verdict((out.float() - ref).abs().max().item(), tol), n_copies=n_copies,
                                 nbytes=kv_bytes + io_bytes + 4 * (_cdiv(length, block_size) + 3), flops=flops)


def prefill_peer(ctx, row, content, q, causal, ref, n_copies, kv_bytes, io_bytes, flops) -> tuple[dict, float]:
    """Time SDPA prefill on contiguous K/V; also returns its error against `ref` (torch's own)."""
    h = ctx.heads
    repeat = 1 if ctx.gqa == "enable_gqa" else h.q // h.kv
    try:
        k, v = build_contiguous(content, n_copies, repeat)
        qp = q.transpose(1, 2).contiguous()  # [n, Hq, T, D]
        kw = causal | ({"enable_gqa": True} if repeat == 1 else {})

        def sdpa(i):
            return F.scaled_dot_product_attention(qp[i:i + 1], k[i:i + 1], v[i:i + 1], scale=h.dim ** -0.5, **kw)

        err_torch = (sdpa(0)[0].transpose(0, 1).float() - ref).abs().max().item()
        return ctx.timed(row, sdpa, n_copies, repeat * kv_bytes + io_bytes, flops), err_torch
    except Exception as exc:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
        return row | _error(exc), 0.0


def add_speedups(rows: list[dict]) -> None:
    """x SDPA against the peer in q's dtype; fp8 rows also against the float-KV row they mirror."""
    medians = {}
    for r in rows:
        if r["status"] == "ok":
            medians[(r["section"], r["batch"], r["context"], r["new_tokens"], r["block_size"], r["kv_dtype"],
                     r["impl"])] = r["median_us"]
    for r in rows:
        if not r["impl"].startswith("fastcot_") or not r["median_us"]:
            continue
        key = (r["section"], r["batch"], r["context"], r["new_tokens"])
        peer = medians.get(key + (None, r["q_dtype"], "sdpa"))
        if peer:
            r["speedup_vs_sdpa"] = peer / r["median_us"]
        if r["kv_dtype"] == "fp8":
            float_kv = medians.get(key + (r["block_size"], r["q_dtype"], r["impl"]))
            if float_kv:
                r["speedup_fp8_vs_float_kv"] = float_kv / r["median_us"]


# ---------------------------------------------------------------------------------------------
# Report


def _rate(r, prefill: bool) -> str:
    value = r and r["tflops" if prefill else "gbps"]
    return common.fmt(value, ".1f" if value is not None and value < 100 else ".0f")


def format_section(rows: list[dict], section: str) -> str:
    """One line per (batch, context, block size, KV dtype): a column group per fastcot backend,
    then the SDPA peer in q's dtype (fp8 lines show the float cache's peer)."""
    rows = [r for r in rows if r["section"] == section]
    prefill = section == "prefill"
    impls = list(dict.fromkeys(r["impl"] for r in rows if r["impl"] != "sdpa"))
    labels = {r["impl"]: r["label"] for r in rows}
    peers = {(r["batch"], r["context"], r["new_tokens"], r["kv_dtype"]): r for r in rows if r["impl"] == "sdpa"}
    lines: dict[tuple, dict] = {}
    for r in rows:  # rows arrive in plan order: batch, context, block size, KV dtype
        if r["impl"] != "sdpa":
            lines.setdefault((r["batch"], r["context"], r["new_tokens"], r["block_size"], r["kv_dtype"]), {})[r["impl"]] = r
    for (b, c, n, dt) in peers:  # a peer with no fastcot row (none available, or skipped) still gets a line
        if not any(k[:3] == (b, c, n) for k in lines):
            lines[(b, c, n, None, dt)] = {}
    headers, groups = (["cached", "new"] if prefill else ["B", "context"]) + ["block", "KV"], []
    rate = "TFLOP/s" if prefill else "GB/s"
    for impl in impls:
        groups.append(len(headers))
        headers += [f"{labels[impl]} µs", "±%", rate, "%bw", "x sdpa"] + ([] if prefill else ["x fp8"])
    groups.append(len(headers))
    headers += ["SDPA µs", rate, "%bw"]
    table = []
    for (b, c, n, bs, kv), by_impl in lines.items():
        q_dtype = next(iter(by_impl.values()))["q_dtype"] if by_impl else kv
        cells = ([_ctx_label(c), str(n)] if prefill else [str(b), _ctx_label(c)]) + [str(bs or "-"), kv]
        for impl in impls:
            r = by_impl.get(impl)
            if r is None:
                cells += ["-"] * (5 if prefill else 6)
                continue
            cells += [common._time_cell(r), common._spread_cell(r)]
            cells += [_rate(r, prefill), common.fmt(r["pct_copy_bw"], ".0f"), common.fmt(r["speedup_vs_sdpa"], ".2f")]
            if not prefill:
                cells.append(common.fmt(r["speedup_fp8_vs_float_kv"], ".2f", missing=""))
        peer = peers.get((b, c, n, q_dtype))
        cells += [common._time_cell(peer) if peer else "-", _rate(peer, prefill),
                  common.fmt(peer and peer["pct_copy_bw"], ".0f")]
        table.append(cells)
    return common.format_table(headers, table, groups=groups)


def judge_targets(rows: list[dict], heads: Heads) -> list[dict]:
    """The issue's decode targets, on the fastest verified fastcot backend, per block size run."""
    decode = [r for r in rows if r["section"] == "decode" and r["impl"].startswith("fastcot_")]
    standard = heads == Heads(*GPU["heads"])
    results = []

    def verdict(res, group, value, minimum):
        if not standard:
            return res | {"status": "n/a", "why": "targets are defined at 32/8 heads, D 128"}
        if value is None:
            return res | {"status": "FAIL" if group else "n/a",
                          "why": "no verified fastcot result" if group else "not run"}
        return res | {"status": "PASS" if value >= minimum else "FAIL"}

    for name, batch, context, min_bw in BW_TARGETS:
        cands = [r for r in decode if (r["batch"], r["context"], r["kv_dtype"]) == (batch, context, "fp16")]
        for bs in sorted({r["block_size"] for r in cands}) or [None]:
            group = [r for r in cands if r["block_size"] == bs]
            ok = [r for r in group if r["status"] == "ok"]
            best = max(ok, key=lambda r: r["pct_copy_bw"]) if ok else None
            res = {"target": name, "batch": batch, "context": context, "block_size": bs, "kv_dtype": "fp16",
                   "need": f">= {min_bw:.0f}% of copy bandwidth", "value": best and best["pct_copy_bw"],
                   "impl": best and best["impl"]}
            results.append(verdict(res, group, res["value"], min_bw))

    name, min_context, min_speedup = FP8_TARGET
    keys = sorted({(r["batch"], r["context"], r["block_size"]) for r in decode
                   if r["kv_dtype"] == "fp8" and r["context"] >= min_context})
    for batch, context, bs in keys or [(None, None, None)]:
        group = [r for r in decode if (r["batch"], r["context"], r["block_size"]) == (batch, context, bs)]
        fastest = {kv: min((r for r in group if r["kv_dtype"] == kv and r["status"] == "ok"),
                           key=lambda r: r["median_us"], default=None) for kv in ("fp8", "fp16")}
        value = (fastest["fp16"]["median_us"] / fastest["fp8"]["median_us"]) if all(fastest.values()) else None
        res = {"target": name, "batch": batch, "context": context, "block_size": bs, "kv_dtype": "fp8",
               "need": f">= {min_speedup}x the fastest fp16 KV time", "value": value,
               "impl": fastest["fp8"] and fastest["fp8"]["impl"]}
        if standard and not any(r["kv_dtype"] == "fp16" for r in group):
            res |= {"status": "n/a", "why": "no fp16 KV row to compare with"}
        results.append(res if "status" in res else verdict(res, group, value, min_speedup))
    return results


def format_targets(targets: list[dict]) -> str:
    lines = ["targets (fastest verified fastcot backend; fp16 KV unless stated):"]
    for t in targets:
        where = "not run" if t["batch"] is None else \
            f"B={t['batch']} {_ctx_label(t['context'])} block {t['block_size']} {t['kv_dtype']}"
        got = t.get("why") or (f"{t['value']:.2f}x" if t["kv_dtype"] == "fp8" else f"{t['value']:.0f}%") + \
            f" ({t['impl']})"
        lines.append(f"  {t['status']:4}  {where:28}  need {t['need']:38}  got {got}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def run_plan(args, tiny: bool) -> dict:
    defaults = CPU if tiny else (GPU | QUICK if args.quick else GPU)
    plan = {axis: getattr(args, axis) or list(defaults[axis]) for axis in ("batch", "context", "block_size")}
    plan["kv_dtype"] = [t.strip() for t in args.kv_dtype.split(",")] if args.kv_dtype else list(defaults["kv_dtype"])
    unknown = set(plan["kv_dtype"]) - set(DTYPES)
    if unknown:
        raise SystemExit(f"--kv-dtype: unknown {sorted(unknown)}; choose from {sorted(DTYPES)}")
    return plan


def model_comparison(rows: list[dict], env: dict, device) -> str:
    """`fastcot bench static`'s predicted %bw (a model) next to the measured one for the decode
    rows at its target shapes (block 16), on this GPU's SM count and measured copy bandwidth."""
    from fastcot.static import compare

    targets = {(1, 32 * KI), (1, 128 * KI), (64, 8 * KI)}

    def shape_of(r):
        if r["section"] != "decode" or (r["batch"], r["context"]) not in targets or r["block_size"] != 16:
            return None
        return {"batch": r["batch"], "context": r["context"], "q_heads": r["num_q_heads"], "kv_heads": r["num_kv_heads"],
                "head_dim": r["head_dim"], "block_size": 16, "kv_dtype": r["kv_dtype"], "q_dtype": r["q_dtype"]}

    why = compare.add_predictions(rows, kernel="paged_decode_attention", shape_of=shape_of,
                                  props=torch.cuda.get_device_properties(device), copy_gbps=env["copy_bandwidth"]["gbps"])
    label = lambda r: f"B={r['batch']} {_ctx_label(r['context'])} kv={r['kv_dtype']}"  # noqa: E731
    return f"model: n/a ({why})" if why else compare.format_comparison(rows, label=label)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device, smoke=args.smoke)
    tiny = device.type == "cpu" or args.smoke
    fastcot, env = common.start_run(device, args.seed)
    plan = run_plan(args, tiny)
    ctx = Context(args, fastcot, device, env, tiny)

    common.print_env(env)
    h = ctx.heads
    print(f"heads {h.q}/{h.kv} (GQA {h.q // h.kv}), D {h.dim}; SDPA GQA by {ctx.gqa}; fp8 scales k {FP8_SCALES[0]:.4g}, "
          f"v {FP8_SCALES[1]:.4g}; fp8 rows are compared with SDPA on the {dtype_name(ctx.float_dtype)} cache")
    availability = {"sdpa": None} | {f"fastcot_{b}": why for b, why in ctx.backends.items()}
    for impl, why in availability.items():
        if why is not None:
            print(f"{impl}: n/a ({why})")

    rows = []
    peer_dtypes = list(dict.fromkeys(ctx.float_dtype if kv == "fp8" else DTYPES[kv] for kv in plan["kv_dtype"]))
    combos = [(b, c) for b in plan["batch"] for c in plan["context"]]
    for i, (batch, context) in enumerate(combos):
        print(f"[{i + 1}/{len(combos)}] decode B={batch} context={_ctx_label(context)}", file=sys.stderr, flush=True)
        for dtype in peer_dtypes:
            rows += measure_decode_peer(ctx, batch, context, dtype)
        for block_size in plan["block_size"]:
            for kv in plan["kv_dtype"]:
                rows += measure_decode(ctx, batch, context, block_size, kv)
    if args.prefill:
        p = CPU_PREFILL if tiny else PREFILL
        for cached in p["cached"]:
            print(f"prefill {p['new_tokens']} new onto {_ctx_label(cached)} cached", file=sys.stderr, flush=True)
            rows += measure_prefill(ctx, cached, p["new_tokens"], plan["block_size"][0])
    add_speedups(rows)
    shared_rows = [] if args.no_shared_prefix else shared_prefix.measure(ctx, tiny, sys.modules[__name__])

    print()
    print(format_section(rows, "decode"))
    print("µs: median; ±%: half the p20-p80 spread; %bw: of measured copy bandwidth; x sdpa: speed-up over SDPA "
          "in q's dtype on a contiguous cache; x fp8: fp8 KV over the same row with float KV; !: wrong result")
    if device.type == "cuda" and not args.no_model:
        print("\n" + model_comparison(rows, env, device))
    if args.prefill:
        print()
        print(format_section(rows, "prefill"))
    if shared_rows:
        print()
        print(shared_prefix.format_rows(shared_rows))
    failed = [r for r in rows if r["status"] in ("wrong", "error")]
    for r in failed:
        print(f"{r['status'].upper()}: {r['impl']} {r['section']} B={r['batch']} {_ctx_label(r['context'])} "
              f"block {r['block_size']} {r['kv_dtype']}: "
              + (r["reason"] or f"max abs err {r['max_abs_err']:.3g} > tol {r['tol']:.3g}"))
    for s in ctx.skipped:
        print(f"skipped (memory): {s}")
    shared_failed = [r for r in shared_rows if r["status"] in ("wrong", "error")]
    for r in shared_failed:
        print(f"{r['status'].upper()}: {r['impl']} ({r['backend']}) n={r['n']} prompt {r['prompt']}: "
              + (r["reason"] or f"max abs err {r['max_abs_err']:.3g} > tol {r['tol']:.3g}"))
    bad = [r for r in failed if r["impl"].startswith("fastcot_")] + shared_failed
    print()
    if tiny:
        targets = {"judged": False, "why": "tiny CPU/smoke run: " + common.CPU_LABEL}
        print(f"targets: not judged ({targets['why']})")
    else:
        results = judge_targets(rows, ctx.heads)
        targets = {"judged": True, "results": results, "shared_prefix": shared_prefix.judge(shared_rows)}
        print(format_targets(results))
        for t in targets["shared_prefix"]:
            print(f"{t['status']}: {t['target']} ({t['backend']}, prompt {t['prompt']}): "
                  f"x{common.fmt(t['speedup_vs_plain'], '.2f')}")

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config |= {"run_plan": plan, "heads": vars(ctx.heads), "tiny": tiny, "fp8_scales": FP8_SCALES,
               "prefill": (CPU_PREFILL if tiny else PREFILL) if args.prefill else None,
               "index_checks_while_timing": False}
    peer = {"gqa": ctx.gqa, "fp8_peer": f"SDPA on the {dtype_name(ctx.float_dtype)} contiguous cache "
            "(the values before fp8 rounding): SDPA has no fp8 KV", "layout": "[B, Hkv, L, D] contiguous"}
    path = common.write_results(family=FAMILY, env=env, rows=rows, out_dir=args.out_dir,
                                extra={"config": config, "implementations": availability, "peer": peer,
                                       "skipped": ctx.skipped, "targets": targets,
                                       "shared_prefix_rows": shared_rows})
    print(f"\nwrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
