"""fastcot's csrc kernels on the CPU, through the project's SIMT emulator (docs/emulator.md).

The real launchers of csrc/ (argument checks, dtype dispatch, launch configuration) and their
kernels, unmodified, are compiled by g++ against the CUDA toolkit's headers into a shared
library (build.py; cached under build/simt/) in which every CUDA thread is a fiber
(runtime.cpp). The functions here call fastcot::int4_dequantize, fastcot::int4_gemv and
fastcot::paged_decode_attention, the launchers fastcot._C binds, on CPU torch tensors.

Interface (CPU tensors; `out`, when not given, is allocated full of NaN; each returns `out`):

    int4_dequantize(weight: Int4Weight, out) -> out
        out [N, K] float32/float16/bfloat16, contiguous; weight.perm applied by the kernel.
    int4_gemv(x, weight: Int4Weight, bias=None, out=None) -> out
        x [M, K] (M <= 16) float32/float16/bfloat16 in input-channel order, unit stride along K;
        out [M, N] of x's dtype. Like fastcot.ops.int4_matmul's cuda path, an act-order perm is
        applied to x (a gather) and rows that are not 16-byte aligned are copied first.
    paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, out=None, *,
                           scale=None, k_scale=1.0, v_scale=1.0, num_splits=None) -> out
        As fastcot.ops.paged_decode_attention (q [B, Hq, D], caches [num_blocks, block_size,
        Hkv, D] of q's dtype or float8_e4m3fn, int32 block_tables [B, W] and seq_lens [B]);
        num_splits None picks the split count fastcot.ops' cuda path picks, and split
        scratch is allocated here (full of NaN).
    call(function, **fields)
        Any launcher by its Params fields (fastcot_capi.cpp lists them): tensors or raw
        addresses for pointers, None for null; for tests of the launchers' own checks.

Errors: ValueError for what a launcher's checks reject (fastcot._C raises ValueError there
too), EmulatorError for a failed launch (its message is the emulator's: barrier or collective
mismatch, deadlock, misaligned load, launch bounds), EmulatorUnavailable when there is no
g++ >= 12 or no CUDA headers (`unavailable_reason()` says which; tests skip on it).

Settings: `thread_order("forward" | "reverse" | "random", seed)` (context manager; also
SIMT_ORDER/SIMT_SEED), `set_workers(n)` (OS threads running blocks; SIMT_WORKERS),
`set_device("sm_90" | "sm_80")` (the limits launches are checked against, and the compute
capability launchers read), `launches()` (kernel, grid, block, dynamic shared memory, whether
it was a programmatic (PDL) launch, and error of every launch since the last call). SIMT_VARIANT=asan loads
the AddressSanitizer build, in a process started with build.asan_environment().
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
from pathlib import Path

import torch

from . import build
from .build import BuildError, EmulatorUnavailable

__all__ = [
    "BuildError", "EmulatorError", "EmulatorUnavailable", "call", "int4_dequantize", "int4_gemv", "launches",
    "as_extension", "library", "paged_decode_attention", "set_device", "set_workers", "thread_order",
    "unavailable_reason",
]

CSRC = build.REPO / "csrc"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float8_e4m3fn: 3}
LOG2E = 1.4426950408889634
_ARG_TYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int64, "f": ctypes.c_double, "d": ctypes.c_int}


class EmulatorError(RuntimeError):
    """A launch failed in the emulator; the message says which kernel, block, thread and line."""


def unavailable_reason() -> str | None:
    """Why the emulator cannot build here (no g++ >= 12, no CUDA headers), or None."""
    try:
        build.toolchain()
    except EmulatorUnavailable as e:
        return str(e)
    return None


def build_fastcot(variant: str = "plain") -> Path:
    """The emulated csrc library: every csrc/*.cu plus fastcot_capi.cpp and the runtime."""
    return build.build_library("fastcot", cuda_root=CSRC, cuda_units=sorted(CSRC.glob("*.cu")),
                               host_units=[build.HERE / "fastcot_capi.cpp"], variant=variant)


def load(path: Path) -> ctypes.CDLL:
    """Loads an emulator library and declares the runtime's controls."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        hint = " (an asan build loads only with libasan preloaded: build.asan_environment())" if "asan" in path.name else ""
        raise EmulatorUnavailable(f"cannot load {path}: {e}{hint}") from e
    lib.simt_set_order.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
    lib.simt_set_workers.argtypes = [ctypes.c_int]
    lib.simt_set_device.argtypes = [ctypes.c_char_p]
    lib.simt_take_failure.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.simt_take_launch_log.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return lib


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded library for SIMT_VARIANT (default plain), built first if needed."""
    return load(build_fastcot(os.environ.get("SIMT_VARIANT", "plain")))


def take_failure(lib: ctypes.CDLL) -> str:
    buf = ctypes.create_string_buffer(8192)
    return buf.value.decode() if lib.simt_take_failure(buf, len(buf)) else ""


def launches(lib: ctypes.CDLL | None = None) -> list[dict]:
    """Every launch since the last call: {"kernel", "grid", "block", "dynamic_smem", "programmatic",
    "error"}."""
    lib = lib or library()
    size = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(size)
        n = lib.simt_take_launch_log(buf, size)
        if n < size:
            return [json.loads(line) for line in buf.value.decode().splitlines()]
        size = n + 1


def check_call(lib: ctypes.CDLL, rc: int, error: bytes, what: str) -> None:
    """Raise what a launcher's status and the emulator's failure message call for."""
    failure = take_failure(lib)
    message = error.decode()
    if rc == 1:
        raise ValueError(message)
    if rc != 0 or failure:
        raise EmulatorError(f"{what}: {message}" + (f"\n{failure}" if failure else ""))


@functools.cache
def _entry(lib: ctypes.CDLL, function: str):
    signature = getattr(lib, f"fastcot_emu_{function}_signature")
    signature.restype = ctypes.c_char_p
    fields = [tuple(item.split(":")) for item in signature().decode().split(",") if item]
    fn = getattr(lib, f"fastcot_emu_{function}")
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int] + [_ARG_TYPES[code] for code, _ in fields]
    return fn, [name for _, name in fields]


def call(function: str, **fields) -> None:
    """Run launcher `function` (int4_dequantize, int4_gemv, paged_decode_attention) with its
    Params fields by name; a tensor stands for its data pointer."""
    lib = library()
    fn, names = _entry(lib, function)
    if set(fields) != set(names):
        raise TypeError(f"{function}: missing {sorted(set(names) - set(fields))}, unexpected "
                        f"{sorted(set(fields) - set(names))}")
    args = [fields[n].data_ptr() if isinstance(fields[n], torch.Tensor) else fields[n] for n in names]
    error = ctypes.create_string_buffer(4096)
    rc = fn(error, len(error), *args)
    check_call(lib, rc, error.value, function)


class _Extension:
    """The emulated library with fastcot._C's launcher interface (keyword fields, raw addresses,
    dtype codes; `device` and `stream` are accepted and ignored), for
    `fastcot.kernels.cuda.emulated(...)`."""

    DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_FLOAT8_E4M3 = range(4)

    def __getattr__(self, function: str):
        if function not in ("int4_dequantize", "int4_gemv", "paged_decode_attention"):
            raise AttributeError(function)

        def launch(*, device=None, stream=None, **fields):
            call(function, **fields)

        return launch


def as_extension() -> _Extension:
    """An object that stands in for fastcot._C: `with fastcot.kernels.cuda.emulated(as_extension()):`
    makes the ops' cuda backend run csrc on CPU tensors through this emulator."""
    library()  # build (or load) first, so a missing toolchain fails here with its reason
    return _Extension()


# ---- settings ----------------------------------------------------------------------------------

_order = [os.environ.get("SIMT_ORDER", "forward"), int(os.environ.get("SIMT_SEED", "0"), 0)]


@contextlib.contextmanager
def thread_order(order: str, seed: int = 0):
    """Resume each block's threads in `order`: "forward" (thread 0 first), "reverse", or
    "random" (reshuffled every round from `seed` and the block index)."""
    previous = list(_order)
    if library().simt_set_order(order.encode(), seed) != 0:
        raise ValueError(f"order: expected forward, reverse or random, got {order!r}")
    _order[:] = [order, seed]
    try:
        yield
    finally:
        library().simt_set_order(previous[0].encode(), previous[1])
        _order[:] = previous


def set_workers(workers: int) -> None:
    """OS threads that run blocks in parallel (0: one per CPU)."""
    library().simt_set_workers(workers)


def set_device(name: str) -> None:
    """The device whose limits launches are checked against: "sm_90" (H100) or "sm_80" (A100)."""
    if library().simt_set_device(name.encode()) != 0:
        raise ValueError(f"device: expected sm_90 or sm_80, got {name!r}")


# ---- kernels -----------------------------------------------------------------------------------

def _cpu(name: str, t: torch.Tensor | None, contiguous: bool = True) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got {type(t).__name__} on {getattr(t, 'device', None)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (strides {t.stride()})")


def _code(name: str, dtype: torch.dtype) -> int:
    if dtype not in DTYPE_CODES:
        raise TypeError(f"{name}: expected float32, float16, bfloat16 or float8_e4m3fn, got {dtype}")
    return DTYPE_CODES[dtype]


def _check_weight(weight) -> None:
    for name in ("qweight", "scales", "zeros", "perm"):
        _cpu(f"weight.{name}", getattr(weight, name))


def int4_dequantize(weight, out: torch.Tensor) -> torch.Tensor:
    """`out [N, K] = weight.dequantize(out.dtype)` by csrc's int4_dequantize kernel."""
    _check_weight(weight)
    _cpu("out", out)
    n, k = weight.shape
    if tuple(out.shape) != (n, k):
        raise ValueError(f"out: expected [N, K] = {[n, k]}, got {list(out.shape)}")
    call("int4_dequantize", qweight=weight.qweight, scales=weight.scales, zeros=weight.zeros, perm=weight.perm,
         out=out, n=n, k=k, group_size=weight.group_size, out_dtype=_code("out", out.dtype),
         scale_dtype=_code("scales", weight.scales.dtype))
    return out


def int4_gemv(x: torch.Tensor, weight, bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """`out [M, N] = x @ weight.dequantize().T (+ bias)` by csrc's int4 GEMV (M <= 16)."""
    _check_weight(weight)
    _cpu("x", x, contiguous=False)
    _cpu("bias", bias)
    if x.dim() != 2 or x.shape[1] != weight.shape[1] or x.stride(1) != 1:
        raise ValueError(f"x: expected [M, K={weight.shape[1]}] with unit stride along K, got {list(x.shape)} {x.stride()}")
    m, n = x.shape[0], weight.shape[0]
    if weight.perm is not None:
        x = x.index_select(1, weight.perm)
    row_bytes = x.stride(0) * x.element_size()
    if x.data_ptr() % 16 or (m > 1 and (row_bytes % 16 or x.stride(0) < x.shape[1])):
        x = x.clone(memory_format=torch.contiguous_format)
    if out is None:
        out = torch.full((m, n), float("nan"), dtype=x.dtype)
    _cpu("out", out, contiguous=False)
    if tuple(out.shape) != (m, n) or out.dtype != x.dtype or out.stride(-1) != 1:
        raise ValueError(f"out: expected [M, N] = {[m, n]} of {x.dtype} with unit stride along N, got "
                         f"{list(out.shape)} {out.dtype} {out.stride()}")
    call("int4_gemv", x=x, qweight=weight.qweight, scales=weight.scales, zeros=weight.zeros, bias=bias, out=out,
         m=m, n=n, k=x.shape[1], group_size=weight.group_size, stride_xm=x.stride(0), stride_om=out.stride(0),
         x_dtype=_code("x", x.dtype), scale_dtype=_code("scales", weight.scales.dtype),
         bias_dtype=_code("bias", (bias if bias is not None else x).dtype))
    return out


def default_num_splits(q: torch.Tensor, k_cache: torch.Tensor, block_tables: torch.Tensor) -> int:
    """The split count fastcot.ops' cuda path picks for these shapes (on an H100's 132 SMs)."""
    from fastcot.ops._int4_configs import H100_SMS
    from fastcot.ops.paged_attention import decode_splits

    batch, q_heads, _ = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    return decode_splits("cuda", batch, q_heads, num_kv_heads, block_tables.shape[1] * block_size, H100_SMS)


def paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, out=None, *, scale=None, k_scale=1.0,
                           v_scale=1.0, num_splits=None) -> torch.Tensor:
    """Split-KV paged decode attention by csrc's kernel and, when split, its merge kernel."""
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens)):
        _cpu(name, t)
    _cpu("q", q, contiguous=False)
    _cpu("block_tables", block_tables, contiguous=False)
    if q.dim() != 3 or q.stride(-1) != 1 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"q [B, Hq, D] with unit stride along D and caches [num_blocks, block_size, Hkv, D] of one "
                         f"shape expected, got {list(q.shape)} {q.stride()}, {list(k_cache.shape)}, {list(v_cache.shape)}")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1 or block_tables.dtype != torch.int32:
        raise ValueError(f"block_tables: expected int32 [B, W] with contiguous rows, got {block_tables.dtype} "
                         f"{list(block_tables.shape)} {block_tables.stride()}")
    if seq_lens.dtype != torch.int32 or tuple(seq_lens.shape) != (q.shape[0],):
        raise ValueError(f"seq_lens: expected int32 [B={q.shape[0]}], got {seq_lens.dtype} {list(seq_lens.shape)}")
    batch, q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    if num_splits is None:
        num_splits = default_num_splits(q, k_cache, block_tables) if batch > 0 else 1
    if out is None:
        out = torch.full(q.shape, float("nan"), dtype=q.dtype)
    _cpu("out", out, contiguous=False)
    if tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out: expected {list(q.shape)} of {q.dtype} with unit stride along D, got "
                         f"{list(out.shape)} {out.dtype} {out.stride()}")
    part_out = part_lse = None
    if num_splits > 1:
        part_out = torch.full((batch, q_heads, num_splits, head_dim), float("nan"))
        part_lse = torch.full((batch, q_heads, num_splits), float("nan"))
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    call("paged_decode_attention", q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
         seq_lens=seq_lens, out=out, part_out=part_out, part_lse=part_lse, batch=batch, q_heads=q_heads,
         num_kv_heads=num_kv_heads, head_dim=head_dim, num_blocks=num_blocks, block_size=block_size,
         num_splits=num_splits, stride_q_b=q.stride(0), stride_q_h=q.stride(1), stride_out_b=out.stride(0),
         stride_out_h=out.stride(1), stride_table_b=block_tables.stride(0), qk_scale=scale * k_scale * LOG2E,
         v_scale=v_scale, q_dtype=_code("q", q.dtype), cache_dtype=_code("k_cache", k_cache.dtype))
    return out
