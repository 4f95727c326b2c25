"""The rows of the report: each hot kernel at its target shapes, as its launcher launches it.

Nothing is re-derived here that a launcher decides: the ops' launchers run on `meta` tensors
(shapes and dtypes, no memory) with the kernel launches intercepted, given the configuration
and split count their pure helpers pick for the SM count (`candidate_configs` and the
autotuner's untuned choice, `decode_splits`), exactly as with `FASTCOT_AUTOTUNE=0` on that GPU.
What the C++ launchers of csrc/ decide (tile, vector width, grid) is mirrored below, next to
the constants it uses; tests/static checks them against the headers.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from fastcot.kernels.pdl import pdl_enabled

META = torch.device("meta")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
# (N, K) of Llama-3-8B layers: gate (and up), down, qkv, o.
INT4_SHAPES = ((14336, 4096), (4096, 14336), (6144, 4096), (4096, 4096))
DECODE_SHAPES = ((1, 32768), (1, 131072), (64, 8192))  # (batch, context)
HEADS = (32, 8, 128)  # Hq, Hkv, D
BLOCK_SIZE = 16
GROUP_SIZE = 128

# csrc/include/fastcot/int4_gemv.cuh, int4_mma.cuh and paged_decode.cuh
GEMV_ROWS = 4  # kGemvRows
GEMV_THREADS = 128  # kGemvThreads
MMA_CHUNK = 128  # kMmaChunk
MMA_MAX_WARPS = 16  # kMmaMaxWarps
MMA_STAGES = 4  # kMmaStages: weight stages of a warp's shared-memory ring
DECODE_THREADS = 128  # kDecodeThreads
DECODE_WARPS = 4  # kDecodeWarps
DECODE_SPLIT_ALIGN = 16  # kSplitAlign
CUDA_TYPES = {"fp16": "6__half", "bf16": "13__nv_bfloat16", "fp8": "13__nv_fp8_e4m3", "fp32": "f"}


@dataclass(frozen=True)
class Target:
    kernel: str  # "int4_matmul" or "paged_decode_attention"
    shape: dict

    @property
    def label(self) -> str:
        s = self.shape
        if self.kernel == "int4_matmul":
            return f"M={s['m']} {s['n']}x{s['k']} g{s['group_size']} {s['dtype']}"
        return f"B={s['batch']} ctx={s['context'] // 1024}k kv={s['kv_dtype']}"


def targets() -> list[Target]:
    rows = [Target("int4_matmul", {"m": m, "n": n, "k": k, "group_size": GROUP_SIZE, "dtype": dtype})
            for dtype in ("fp16", "bf16") for m in (1, 16) for n, k in INT4_SHAPES]
    q_heads, kv_heads, head_dim = HEADS
    rows += [Target("paged_decode_attention", {"batch": b, "context": ctx, "q_heads": q_heads, "kv_heads": kv_heads,
                                               "head_dim": head_dim, "block_size": BLOCK_SIZE, "kv_dtype": kv,
                                               "q_dtype": "bf16"})
             for kv in ("bf16", "fp8") for b, ctx in DECODE_SHAPES]
    return rows


@dataclass
class Launch:
    """One kernel launch of a call. Triton: `fn` and its launch keyword arguments; CUDA: the
    kernel's mangled name and the source file it is built from."""

    name: str
    grid: tuple
    threads: int
    fn: object = None
    kwargs: dict = field(default_factory=dict)
    symbol: str = ""
    source: str = ""
    dynamic_shared: int = 0  # CUDA: bytes of dynamic shared memory the launcher asks for
    pdl: bool = False  # launched with programmatic dependent launch (sm_90+)


@dataclass
class Plan:
    """One row: the launches of a call and what the main kernel's loop streams."""

    target: Target
    backend: str
    sms: int
    config: dict
    launches: list[Launch]
    iterations: int  # main-loop iterations of the busiest block
    bytes_per_iteration: float  # weights (+ scales, zeros) or K and V per block per iteration
    call_bytes: float  # what the call must move (the benchmark's byte count)
    extra_bytes: float = 0.0  # split partials written and read back (by an extra launch, or in-kernel: reduce_group)
    # Programs that share one in-kernel split-K reduction: all but the last to arrive leave at
    # the first EXIT after the loop; only the last runs the reduction (1: no such reduction).
    reduce_group: int = 1
    weights_per_iteration: int | None = None

    @property
    def main(self) -> Launch:
        return self.launches[0]

    @property
    def grid_blocks(self) -> int:
        return math.prod(self.main.grid)


@contextmanager
def intercept(module, names):
    """Replace `module.<name>` for each name with a recorder; yields the recorded calls."""
    calls, saved = [], {n: getattr(module, n) for n in names}

    def recorder(name):
        return lambda *args, **kwargs: calls.append((name, args, kwargs))

    for n in names:
        setattr(module, n, recorder(n))
    try:
        yield calls
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)


@contextmanager
def triton_launches(*kernels):
    """Record `kernel[grid](**kwargs)` of the given @triton.jit kernels instead of running them."""
    calls = []
    for k in kernels:
        k.run = lambda *args, grid, warmup, _k=k, **kwargs: calls.append((_k, tuple(grid), kwargs))
    try:
        yield calls
    finally:
        for k in kernels:
            del k.run  # back to JITFunction.run


def _int4_tensors(s: dict):
    dtype = DTYPES[s["dtype"]]
    m, n, k, g = s["m"], s["n"], s["k"], s["group_size"]
    x = torch.empty((m, k), dtype=dtype, device=META)
    qweight = torch.empty((n, k // 8), dtype=torch.int32, device=META)
    scales = torch.empty((k // g, n), dtype=dtype, device=META)
    zeros = torch.empty((k // g, n), dtype=dtype, device=META)
    out = torch.empty((m, n), dtype=dtype, device=META)
    return x, qweight, scales, zeros, out


def _int4_call_bytes(s: dict) -> float:
    elem = DTYPES[s["dtype"]].itemsize
    m, n, k, g = s["m"], s["n"], s["k"], s["group_size"]
    return n * k / 2 + 2 * (k // g) * n * elem + m * k * elem + m * n * elem


def int4_triton(target: Target, sms: int, arch: int = 90) -> Plan:
    from fastcot.kernels.triton import int4_gemv
    from fastcot.kernels.triton import int4_matmul as kernels
    from fastcot.ops._int4_configs import Autotuner, candidate_configs
    from fastcot.ops.int4_matmul import int4_matmul_triton

    s = target.shape
    x, qweight, scales, zeros, out = _int4_tensors(s)
    # What the autotuner returns when it is off (FASTCOT_AUTOTUNE=0, graph capture, not CUDA).
    config = Autotuner().pick(None, candidate_configs(s["m"], s["n"], s["k"], s["group_size"], sms), None, META)
    with triton_launches(kernels._int4_matmul_kernel, kernels._splitk_reduce_kernel,
                         int4_gemv._int4_gemv_kernel) as calls:
        int4_matmul_triton(x, qweight, scales, zeros, None, s["group_size"], None, out, config=config, arch=arch)
    launches = [Launch(fn.__name__, grid, kw["num_warps"] * 32, fn, kw, pdl=bool(kw.get("launch_pdl")))
                for fn, grid, kw in calls]
    kw = launches[0].kwargs
    block_n, block_k, split = kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"]
    groups_per_tile = max(1, block_k // s["group_size"])
    elem = x.element_size()
    extra = 2 * split * s["m"] * s["n"] * 4 if split > 1 else 0.0
    return Plan(
        target=target, backend="triton", sms=sms,
        config={"block_m": kw.get("BLOCK_M", 1), "block_n": block_n, "block_k": block_k, "split_k": split,
                "num_warps": kw["num_warps"], "num_stages": kw["num_stages"]},
        launches=launches, iterations=math.ceil(kw["k_per_split"] / block_k),
        bytes_per_iteration=block_n * block_k / 2 + 2 * groups_per_tile * block_n * elem,
        call_bytes=_int4_call_bytes(s), extra_bytes=extra, weights_per_iteration=block_n * block_k,
        reduce_group=split if split > 1 and len(launches) == 1 else 1,
    )


def gemv_m_tile(m: int) -> int:
    """csrc/int4_gemv.cu dispatch_m: tiles of 1, 2, 4, 8, 16 rows."""
    return next(t for t in (1, 2, 4, 8, 16) if m <= t)


def gemv_vec(k: int, group_size: int) -> int:
    """csrc/int4_gemv.cu wide_loads: 16-byte weight loads (VEC 4) when rows and groups are
    whole 32-nibble chunks (and qweight is 16-byte aligned, as torch allocates it)."""
    group = k if group_size == -1 else group_size
    return 4 if k % 32 == 0 and group % 32 == 0 else 1


def mma_applies(dtype: str, k: int, group_size: int) -> bool:
    """csrc/int4_gemv.cu mma_applies, for the report's tensors (scales of x's dtype, K < 2^23)."""
    group = k if group_size == -1 else group_size
    return dtype in ("fp16", "bf16") and k % MMA_CHUNK == 0 and group % MMA_CHUNK == 0


def mma_resident_threads(m_tile: int) -> int:
    """csrc/include/fastcot/int4_mma.cuh mma_resident_threads."""
    return 768 if m_tile == 8 else 512


def mma_max_warps(m_tile: int) -> int:
    """csrc/include/fastcot/int4_mma.cuh mma_max_warps."""
    return 8 if m_tile == 8 else MMA_MAX_WARPS


def mma_tiles(m_tile: int) -> int:
    """csrc/include/fastcot/int4_mma.cuh mma_tiles: n8 tiles (of weight rows) per block."""
    return 2 if m_tile == 8 else 4


def mma_ring_bytes(m_tile: int) -> int:
    """csrc/include/fastcot/int4_mma.cuh mma_ring_bytes: a warp's dynamic shared memory."""
    return MMA_STAGES * mma_tiles(m_tile) * 32 * 16


def mma_warps(n: int, chunks: int, sms: int, resident: int, rows: int, max_warps: int = MMA_MAX_WARPS) -> int:
    """csrc/int4_gemv.cu mma_warps: the most warps (`max_warps` down to 2) that keep the grid of
    `rows`-column blocks in one wave at `resident` threads per SM, else 4; never more warps
    than chunks."""
    blocks = math.ceil(n / rows)
    warps = next((w for w in (16, 8, 4, 2) if w <= max_warps and blocks <= sms * (resident // (32 * w))), 4)
    while warps > 1 and warps > chunks:
        warps //= 2
    return warps


def int4_cuda(target: Target, sms: int, arch: int = 90) -> Plan:
    from fastcot.kernels import cuda
    from fastcot.ops.int4_matmul import int4_matmul_cuda

    s = target.shape
    x, qweight, scales, zeros, out = _int4_tensors(s)
    cuda.check_int4_gemv(x, out)  # the op's own check: M <= 16
    with intercept(cuda, ["int4_gemv"]) as calls:
        int4_matmul_cuda(x, qweight, scales, zeros, None, s["group_size"], None, out)
    (_, args, _), = calls
    m, k = args[0].shape
    n = args[-1].shape[1]
    if mma_applies(s["dtype"], k, s["group_size"]):
        return _int4_mma_plan(target, sms, m, n, k, x.element_size(), pdl_enabled(arch))
    m_tile, vec = gemv_m_tile(m), gemv_vec(k, s["group_size"])
    symbol = f"_ZN7fastcot16int4_gemv_kernelI{CUDA_TYPES[s['dtype']]}Li{m_tile}ELi{vec}EEEvNS_12Int4GemvArgsE"
    launch = Launch("int4_gemv_kernel", (math.ceil(n / GEMV_ROWS),), GEMV_THREADS, symbol=symbol,
                    source="int4_gemv.cu", pdl=pdl_enabled(arch))
    chunks = k // (8 * vec)  # each lane takes 8 * VEC weights of each of the block's rows per step
    chunk_groups = GEMV_THREADS * 8 * vec // s["group_size"]  # groups one step of the block covers
    return Plan(
        target=target, backend="cuda", sms=sms,
        config={"m_tile": m_tile, "vec": vec, "rows_per_block": GEMV_ROWS, "threads": GEMV_THREADS},
        launches=[launch], iterations=math.ceil(chunks / GEMV_THREADS),
        bytes_per_iteration=GEMV_THREADS * GEMV_ROWS * 4 * vec + 2 * max(1, chunk_groups) * GEMV_ROWS * x.element_size(),
        call_bytes=_int4_call_bytes(s), weights_per_iteration=GEMV_THREADS * GEMV_ROWS * 8 * vec,
    )


def _int4_mma_plan(target: Target, sms: int, m: int, n: int, k: int, elem: int, pdl: bool) -> Plan:
    """The tensor-core kernel: a block of W warps owns 8 x tiles columns; per iteration each warp
    takes one 128-wide chunk of K, each lane one 16-byte vector per n8 tile (through the warp's
    cp.async ring)."""
    s = target.shape
    m_tile = 8 if m <= 8 else 16
    tiles = mma_tiles(m_tile)
    rows = 8 * tiles
    chunks = k // MMA_CHUNK
    warps = mma_warps(n, chunks, sms, mma_resident_threads(m_tile), rows, mma_max_warps(m_tile))
    group = k if s["group_size"] == -1 else s["group_size"]
    zeros = "1"  # the report's weights carry zero points
    symbol = f"_ZN7fastcot15int4_mma_kernelI{CUDA_TYPES[s['dtype']]}Li{m_tile}ELb{zeros}EEEvNS_11Int4MmaArgsE"
    launch = Launch("int4_mma_kernel", (math.ceil(n / rows),), 32 * warps, symbol=symbol, source="int4_gemv.cu",
                    dynamic_shared=warps * mma_ring_bytes(m_tile), pdl=pdl)
    groups = warps * MMA_CHUNK / group  # groups one iteration of the block covers (a fraction for group -1)
    return Plan(
        target=target, backend="cuda", sms=sms,
        config={"m_tile": m_tile, "rows_per_block": rows, "warps": warps, "threads": 32 * warps,
                "stages": MMA_STAGES},
        launches=[launch], iterations=math.ceil(chunks / warps),
        bytes_per_iteration=32 * warps * tiles * 16 + 2 * groups * rows * elem,
        call_bytes=_int4_call_bytes(s), weights_per_iteration=32 * warps * tiles * 32,
    )


def _decode_tensors(s: dict):
    q_dtype, kv_dtype = DTYPES[s["q_dtype"]], DTYPES[s["kv_dtype"]]
    b, ctx, bs = s["batch"], s["context"], s["block_size"]
    width = math.ceil(ctx / bs)
    q = torch.empty((b, s["q_heads"], s["head_dim"]), dtype=q_dtype, device=META)
    cache = torch.empty((b * width, bs, s["kv_heads"], s["head_dim"]), dtype=kv_dtype, device=META)
    tables = torch.empty((b, width), dtype=torch.int32, device=META)
    seq_lens = torch.empty((b,), dtype=torch.int32, device=META)
    return q, cache, tables, seq_lens, torch.empty_like(q)


def _decode_call_bytes(s: dict) -> float:
    kv = DTYPES[s["kv_dtype"]].itemsize
    q = DTYPES[s["q_dtype"]].itemsize
    b, ctx = s["batch"], s["context"]
    return (b * ctx * s["kv_heads"] * s["head_dim"] * kv * 2 + 2 * b * s["q_heads"] * s["head_dim"] * q
            + b * math.ceil(ctx / s["block_size"]) * 4 + b * 4)


def _split_bytes(s: dict, splits: int) -> float:
    """Partials written by the split kernel and read by the merge: out [B, Hq, S, D] + lse."""
    return 0.0 if splits == 1 else 2 * s["batch"] * s["q_heads"] * splits * (s["head_dim"] + 1) * 4


def decode_triton(target: Target, sms: int, arch: int = 90) -> Plan:
    from fastcot.kernels.triton import paged_attention as kernels
    from fastcot.ops.paged_attention import decode_splits, paged_decode_triton

    s = target.shape
    q, cache, tables, seq_lens, out = _decode_tensors(s)
    splits = decode_splits("triton", s["batch"], s["q_heads"], s["kv_heads"], tables.shape[1] * s["block_size"], sms,
                           arch=arch, kv_fp8=s["kv_dtype"] == "fp8")
    with triton_launches(kernels._paged_decode_kernel, kernels._decode_merge_kernel) as calls:
        paged_decode_triton(q, cache, cache, tables, seq_lens, out, s["head_dim"] ** -0.5, 1.0, 1.0,
                            num_splits=splits, arch=arch)
    launches = [Launch(fn.__name__, grid, kw.get("num_warps", 4) * 32, fn, kw, pdl=bool(kw.get("launch_pdl")))
                for fn, grid, kw in calls]
    kw = launches[0].kwargs
    block_n = kw["BLOCK_N"]
    per_split = math.ceil(math.ceil(s["context"] / splits) / block_n) * block_n
    return Plan(
        target=target, backend="triton", sms=sms,
        config={"block_n": block_n, "block_d": kw["BLOCK_D"], "group_pad": kw["GROUP_PAD"], "splits": splits,
                "num_warps": kw["num_warps"], "num_stages": kw["num_stages"]},
        launches=launches, iterations=per_split // block_n,
        bytes_per_iteration=2 * block_n * s["head_dim"] * cache.element_size(),
        call_bytes=_decode_call_bytes(s), extra_bytes=_split_bytes(s, splits),
    )


def decode_group_tile(group: int) -> int:
    """csrc/paged_decode.cu group_tile: query heads per block."""
    return 1 if group <= 1 else 2 if group <= 2 else 4 if group <= 4 else 8


def decode_tile_tokens(element_size: int) -> int:
    """DecodeTraits::kTile: tokens a block covers per step, kWarpTokens = 32 / element size per warp."""
    return DECODE_WARPS * (32 // element_size)


def decode_cuda(target: Target, sms: int, arch: int = 90) -> Plan:
    from fastcot.kernels import cuda
    from fastcot.ops.paged_attention import decode_splits, paged_decode_cuda

    s = target.shape
    q, cache, tables, seq_lens, out = _decode_tensors(s)
    cuda.check_paged_decode(q, cache, num_splits=1)  # the op's own check: dtypes, head sizes
    splits = decode_splits("cuda", s["batch"], s["q_heads"], s["kv_heads"], tables.shape[1] * s["block_size"], sms)
    with intercept(cuda, ["paged_decode_attention"]) as calls:
        paged_decode_cuda(q, cache, cache, tables, seq_lens, out, s["head_dim"] ** -0.5, 1.0, 1.0, num_splits=splits)
    (_, _, kwargs), = calls
    splits = kwargs["num_splits"]
    group = s["q_heads"] // s["kv_heads"]
    g, d = decode_group_tile(group), s["head_dim"]
    symbol = f"_ZN7fastcot19paged_decode_kernelI{CUDA_TYPES[s['kv_dtype']]}Li{d}ELi{g}EEEvNS_15PagedDecodeArgsE"
    grid = (s["batch"], s["kv_heads"] * math.ceil(group / g), splits)
    launches = [Launch("paged_decode_kernel", grid, DECODE_THREADS, symbol=symbol, source="paged_decode.cu",
                       pdl=pdl_enabled(arch))]
    if splits > 1:
        launches.append(Launch("paged_decode_merge_kernel", (s["batch"], s["q_heads"]), d,
                               symbol="_ZN7fastcot25paged_decode_merge_kernelENS_15PagedDecodeArgsEi",
                               source="paged_decode.cu", pdl=pdl_enabled(arch)))
    tile = decode_tile_tokens(cache.element_size())
    per_split = math.ceil(math.ceil(s["context"] / splits) / DECODE_SPLIT_ALIGN) * DECODE_SPLIT_ALIGN
    return Plan(
        target=target, backend="cuda", sms=sms,
        config={"group_tile": g, "tile_tokens": tile, "splits": splits, "threads": DECODE_THREADS},
        launches=launches, iterations=math.ceil(per_split / tile),
        bytes_per_iteration=2 * tile * d * cache.element_size(),
        call_bytes=_decode_call_bytes(s), extra_bytes=_split_bytes(s, splits),
    )


PLANNERS = {
    ("int4_matmul", "triton"): int4_triton,
    ("int4_matmul", "cuda"): int4_cuda,
    ("paged_decode_attention", "triton"): decode_triton,
    ("paged_decode_attention", "cuda"): decode_cuda,
}


def plan(target: Target, backend: str, sms: int, arch: int = 90) -> Plan:
    """The launch plan on `sms` SMs of SM version `arch` (the Triton decode split count and the
    int4 launches' PDL choice depend on it)."""
    planner = PLANNERS[(target.kernel, backend)]
    return planner(target, sms, arch)
