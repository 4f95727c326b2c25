"""The compiled CUDA extension `fastcot._C` (built from csrc/ by setup.py), and its launchers.

Importing this module never fails and never touches the GPU: the extension is
loaded on first use, and `unavailable_reason()` says why it cannot serve calls
(not built, failed to import, or no CUDA device). The launchers here assert the
layout cheaply and pass raw pointers, sizes, dtype codes and the caller's
current stream; argument validation for users lives in `fastcot.ops`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from types import ModuleType

import torch

_NOT_BUILT = (
    "fastcot._C was not built (no CUDA toolkit at install time, or FASTCOT_BUILD_CUDA=0); "
    "reinstall with FASTCOT_BUILD_CUDA=1 to build it or see why it cannot be"
)


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        # import_module, unlike `from fastcot import _C`, tells "absent" apart by e.name.
        module = importlib.import_module("fastcot._C")
    except ModuleNotFoundError as e:
        if e.name == "fastcot._C":
            return None, _NOT_BUILT
        return None, f"fastcot._C failed to import: {e}"
    except ImportError as e:  # e.g. an undefined symbol or a build for another Python
        return None, f"fastcot._C failed to import: {e}"
    return module, None


@functools.cache
def _device_count() -> int:
    # The CUDA runtime fixes its device list at initialization, so one query suffices.
    module, _ = _load()
    return module.device_count() if module is not None else 0


# A stand-in for fastcot._C with the same launcher functions, running csrc on CPU tensors (the
# SIMT emulator of a source checkout, tools/simt). Only `emulated()` sets it, for tests.
_emulated: list = []


@contextlib.contextmanager
def emulated(module):
    """Serve the cuda backend with `module` (the emulator's `as_extension()`) on CPU tensors
    inside the block, so that `fastcot.ops` calls reach the real csrc launchers on the CPU."""
    _emulated.append(module)
    try:
        yield
    finally:
        _emulated.pop()


def emulating() -> bool:
    """Whether the cuda backend currently runs through an emulated extension on CPU tensors."""
    return bool(_emulated)


def _device_type() -> str:
    return "cpu" if _emulated else "cuda"


def _stream(device: torch.device) -> int:
    return 0 if _emulated else torch.cuda.current_stream(device).cuda_stream


def extension() -> ModuleType | None:
    """The loaded `fastcot._C` module, or None when it cannot be imported."""
    return _load()[0]


def loaded() -> bool:
    """Whether `fastcot._C` imported (it may still see no device)."""
    return extension() is not None


def unavailable_reason() -> str | None:
    """Why the cuda backend cannot run kernels here, or None when it can."""
    if _emulated:
        return None
    module, reason = _load()
    if module is None:
        return reason
    if _device_count() == 0:
        return f"no CUDA device (fastcot._C loaded; CUDA says {module.device_error() or 'device count is 0'})"
    return None


def available() -> bool:
    """Whether `fastcot._C` loaded and sees at least one CUDA device."""
    return unavailable_reason() is None


def build_info() -> dict:
    """How the extension was built (arches, PTX, CUDA version) plus what it sees at runtime."""
    module, reason = _load()
    if module is None:
        return {"built": False, "reason": reason}
    return {
        "built": True,
        "path": module.__file__,
        **module.build_info(),
        "runtime_version": module.cuda_runtime_version(),
        "driver_version": module.cuda_driver_version(),
        "device_count": _device_count(),
    }


def _require(op: str) -> ModuleType:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cuda backend cannot run {op}: {reason}")
    return _emulated[-1] if _emulated else extension()


def _dtype_code(module: ModuleType, dtype: torch.dtype, name: str) -> int:
    codes = {
        torch.float32: module.DTYPE_FLOAT32,
        torch.float16: module.DTYPE_FLOAT16,
        torch.bfloat16: module.DTYPE_BFLOAT16,
    }
    if dtype not in codes:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {dtype}")
    return codes[dtype]


def _check_tensor(t: torch.Tensor, name: str, device: torch.device, shape: tuple, dtype=None) -> None:
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (strides {t.stride()})")


def _check_int4_weight(qweight, scales, zeros, device, n: int, k: int, groups: int) -> None:
    """An `Int4Weight`'s tensors as the kernels read them: qweight int32 `[N, K // 8]`,
    scales and zeros (of the scales' dtype, or None) `[G, N]`."""
    _check_tensor(qweight, "qweight", device, (n, k // 8), torch.int32)
    _check_tensor(scales, "scales", device, (groups, n))
    if zeros is not None:
        _check_tensor(zeros, "zeros", device, (groups, n), scales.dtype)


def int4_dequantize(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    group_size: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """Dequantize fastcot's packed int4 weight into `out` `[N, K]` on the current stream.

    `qweight` int32 `[N, K // 8]`; `scales`, `zeros` `[G, N]` with `G = K // group_size`
    (`group_size` -1: one group), fp16/bf16/fp32, `zeros` None meaning the symmetric zero
    point 8; `perm` int32 `[K]` or None. `out` fp16/bf16/fp32 on the same CUDA device.
    Same result as `fastcot.kernels.reference.int4_dequantize` bit for bit. Returns `out`.
    """
    module = _require("int4_dequantize")
    if out.device.type != _device_type():
        raise ValueError(f"out: expected a tensor on the cuda backend's device, got {out.device}")
    if out.dim() != 2:
        raise ValueError(f"out: expected [N, K], got shape {list(out.shape)}")
    n, k = out.shape
    if k % 8 != 0:
        raise ValueError(f"out: K must be a multiple of 8, got K={k}")
    if group_size != -1 and (group_size <= 0 or k % group_size != 0):
        raise ValueError(f"group_size: expected -1 or a positive divisor of K={k}, got {group_size}")
    groups = 1 if group_size == -1 else k // group_size
    _check_tensor(out, "out", out.device, (n, k))
    _check_int4_weight(qweight, scales, zeros, out.device, n, k, groups)
    if perm is not None:
        _check_tensor(perm, "perm", out.device, (k,), torch.int32)

    module.int4_dequantize(
        qweight=qweight.data_ptr(),
        scales=scales.data_ptr(),
        zeros=zeros.data_ptr() if zeros is not None else 0,
        perm=perm.data_ptr() if perm is not None else 0,
        out=out.data_ptr(),
        n=n,
        k=k,
        group_size=group_size,
        out_dtype=_dtype_code(module, out.dtype, "out"),
        scale_dtype=_dtype_code(module, scales.dtype, "scales"),
        device=out.device.index,
        stream=_stream(out.device),
    )
    return out


# --- int4 GEMV (decode) ---------------------------------------------------------------------

INT4_GEMV_MAX_M = 16  # equals fastcot._C.INT4_GEMV_MAX_M; checked here so the error needs no GPU


def check_int4_gemv(x: torch.Tensor, out: torch.Tensor) -> None:
    """What the CUDA GEMV cannot serve that the op contract allows: more than
    `INT4_GEMV_MAX_M` rows (prefill belongs to the triton backend)."""
    m = x.shape[0]
    if m > INT4_GEMV_MAX_M:
        raise ValueError(
            f"x: the cuda backend's int4 GEMV serves decode sizes, at most {INT4_GEMV_MAX_M} rows, got "
            f"M={m}; run prefill-sized matmuls with fastcot.backend('triton')"
        )
    if out.shape[0] != m or out.stride(-1) != 1:
        raise ValueError(f"out: expected [M={m}, N] with unit stride along N, got {list(out.shape)} {out.stride()}")


def int4_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    group_size: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """`out[M, N] = x[M, K] @ W.T (+ bias)` on the current stream, M <= 16, fp32 accumulation.

    `x` fp16/bf16/fp32 `[M, K]` with unit stride along K, 16-byte aligned rows, columns in
    the weight's stored order (an act-order perm already applied); `qweight` int32
    `[N, K // 8]`; `scales`, `zeros` `[G, N]` (`zeros` None: zero point 8); `bias` `[N]` or
    None; `out` `[M, N]` of x's dtype, unit stride along N. Returns `out`.
    """
    module = _require("int4_gemv")
    check_int4_gemv(x, out)
    if x.device.type != _device_type():
        raise ValueError(f"x: expected a tensor on the cuda backend's device, got {x.device}")
    m, k = x.shape
    n = out.shape[1]
    groups = 1 if group_size == -1 else k // group_size
    _check_int4_weight(qweight, scales, zeros, x.device, n, k, groups)
    if bias is not None:
        _check_tensor(bias, "bias", x.device, (n,))
    if out.dtype != x.dtype or out.device != x.device:
        raise TypeError(f"out: expected {x.dtype} on {x.device}, got {out.dtype} on {out.device}")
    module.int4_gemv(
        x=x.data_ptr(),
        qweight=qweight.data_ptr(),
        scales=scales.data_ptr(),
        zeros=zeros.data_ptr() if zeros is not None else 0,
        bias=bias.data_ptr() if bias is not None else 0,
        out=out.data_ptr(),
        m=m,
        n=n,
        k=k,
        group_size=group_size,
        stride_xm=x.stride(0),
        stride_om=out.stride(0),
        x_dtype=_dtype_code(module, x.dtype, "x"),
        scale_dtype=_dtype_code(module, scales.dtype, "scales"),
        bias_dtype=_dtype_code(module, bias.dtype if bias is not None else x.dtype, "bias"),
        device=x.device.index,
        stream=_stream(x.device),
    )
    return out


# --- paged decode attention -----------------------------------------------------------------

PAGED_DECODE_HEAD_DIMS = (64, 128, 256)
PAGED_DECODE_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn)
PAGED_DECODE_MAX_SPLITS = 64  # equals fastcot._C.PAGED_DECODE_MAX_SPLITS
MAX_GRID_YZ = 65535


def decode_group_tile(group: int) -> int:
    """Query heads per block: the whole GQA group up to 8, else tiles of 8 (the same rule as
    csrc/paged_decode.cu's group_tile)."""
    return 1 if group <= 1 else 2 if group <= 2 else 4 if group <= 4 else 8


def decode_group_tiles(group: int) -> int:
    """Blocks per KV head: the kernel serves up to 8 query heads of a GQA group per block."""
    return -(-group // decode_group_tile(group))


def decode_blocks_per_sm(group: int) -> int:
    """Blocks of the decode kernel an SM holds: its `__launch_bounds__` minimum, 3 blocks of 4
    warps (registers capped at 168) for every query-head tile and cache dtype up to head_dim 128
    (csrc/include/fastcot/paged_decode.cuh decode_min_blocks; shared memory stays under 20 KB a
    block). The exception there, 2 blocks for head_dim 256, is not seen here: the split count
    depends on shapes the op knows before the head size, and is then a little too large."""
    return 3


DECODE_MIN_WAVE_EFFICIENCY = 0.95
DECODE_SPLIT_FREE_WAVES = 4  # from this many waves on, the tail of the last one costs < 1/4 wave


def decode_num_splits(batch: int, q_heads: int, num_kv_heads: int, max_context: int, sms: int, *,
                      max_splits: int, min_tokens_per_split: int) -> int:
    """Splits of each sequence's context for the CUDA decode kernel on `sms` SMs: the fewest
    whose grid fills whole waves of resident blocks to DECODE_MIN_WAVE_EFFICIENCY (grid over
    waves x slots), else the most efficient count. A split keeps at least
    `min_tokens_per_split` tokens of capacity. Uses only shapes (the block-table width, never
    the lengths), so a captured CUDA graph stays valid."""
    group = q_heads // num_kv_heads
    return wave_filling_splits(batch * num_kv_heads * decode_group_tiles(group), sms * decode_blocks_per_sm(group),
                               cap=max(1, min(max_splits, max_context // min_tokens_per_split)))


def wave_filling_splits(blocks: int, slots: int, *, cap: int) -> int:
    """Split count (1..`cap`) for a grid of `blocks` unsplit blocks on `slots` resident block
    slots (SMs x blocks per SM): 1 from DECODE_SPLIT_FREE_WAVES waves on, else the fewest splits
    whose grid fills whole waves to DECODE_MIN_WAVE_EFFICIENCY (grid over waves x slots), else
    the most efficient count. Shared by the CUDA and Triton decode launchers."""
    if blocks == 0 or blocks >= DECODE_SPLIT_FREE_WAVES * slots:
        return 1

    def efficiency(splits: int) -> float:
        grid = blocks * splits
        return grid / (-(-grid // slots) * slots)

    best = 1
    for splits in range(1, cap + 1):
        if efficiency(splits) >= DECODE_MIN_WAVE_EFFICIENCY:
            return splits
        if efficiency(splits) > efficiency(best) + 1e-9:
            best = splits
    return best


def check_paged_decode(q: torch.Tensor, k_cache: torch.Tensor, num_splits: int) -> None:
    """What the CUDA decode kernel cannot serve that the op contract allows."""
    if k_cache.dtype not in PAGED_DECODE_CACHE_DTYPES:
        raise TypeError(
            f"k_cache: the cuda backend's decode kernel serves float16, bfloat16 and float8_e4m3fn caches, "
            f"got {k_cache.dtype}"
        )
    head_dim = k_cache.shape[-1]
    if head_dim not in PAGED_DECODE_HEAD_DIMS:
        raise ValueError(
            f"head_dim: the cuda backend's decode kernel serves {PAGED_DECODE_HEAD_DIMS}, got {head_dim}"
        )
    if q.shape[1] > MAX_GRID_YZ:
        raise ValueError(f"q: at most {MAX_GRID_YZ} query heads, got {q.shape[1]}")
    if not 1 <= num_splits <= PAGED_DECODE_MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {PAGED_DECODE_MAX_SPLITS}], got {num_splits}")


def _dtype_code_with_fp8(module: ModuleType, dtype: torch.dtype, name: str) -> int:
    if dtype == torch.float8_e4m3fn:
        return module.DTYPE_FLOAT8_E4M3
    return _dtype_code(module, dtype, name)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    out: torch.Tensor,
    *,
    qk_scale: float,
    v_scale: float,
    num_splits: int,
    part_out: torch.Tensor | None = None,
    part_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Split-KV paged decode attention into `out [B, Hq, D]` on the current stream.

    `q` `[B, Hq, D]` (unit stride along D); caches `[num_blocks, block_size, Hkv, D]`
    contiguous, q's dtype or float8_e4m3fn; `block_tables` `[B, W]` int32 with contiguous rows;
    `seq_lens` `[B]` int32. `qk_scale` is `scale * k_scale * log2(e)`. With `num_splits > 1`,
    `part_out` `[B, Hq, num_splits, D]` and `part_lse` `[B, Hq, num_splits]` float32 are the
    caller's scratch. Returns `out`.
    """
    module = _require("paged_decode_attention")
    check_paged_decode(q, k_cache, num_splits)
    device = k_cache.device
    if device.type != _device_type():
        raise ValueError(f"k_cache: expected a tensor on the cuda backend's device, got {device}")
    batch, q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    _check_tensor(v_cache, "v_cache", device, tuple(k_cache.shape), k_cache.dtype)
    _check_tensor(k_cache, "k_cache", device, tuple(k_cache.shape))
    _check_tensor(seq_lens, "seq_lens", device, (batch,), torch.int32)
    for name, t in (("q", q), ("out", out)):
        if t.device != device or tuple(t.shape) != (batch, q_heads, head_dim) or t.stride(-1) != 1:
            raise ValueError(f"{name}: expected [B, Hq, D] = {[batch, q_heads, head_dim]} on {device} with unit "
                             f"stride along D, got {list(t.shape)} {t.stride()} on {t.device}")
    if out.dtype != q.dtype:
        raise TypeError(f"out: expected q's dtype {q.dtype}, got {out.dtype}")
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.shape[0] != batch:
        raise ValueError(f"block_tables: expected int32 [B={batch}, W], got {block_tables.dtype} "
                         f"{list(block_tables.shape)}")
    if block_tables.device != device or block_tables.stride(1) != 1:
        raise ValueError("block_tables: expected contiguous rows on the cache's device")
    if num_splits > 1:
        if part_out is None or part_lse is None:
            raise ValueError("part_out and part_lse are required when num_splits > 1")
        _check_tensor(part_out, "part_out", device, (batch, q_heads, num_splits, head_dim), torch.float32)
        _check_tensor(part_lse, "part_lse", device, (batch, q_heads, num_splits), torch.float32)
    module.paged_decode_attention(
        q=q.data_ptr(),
        k_cache=k_cache.data_ptr(),
        v_cache=v_cache.data_ptr(),
        block_tables=block_tables.data_ptr(),
        seq_lens=seq_lens.data_ptr(),
        out=out.data_ptr(),
        part_out=part_out.data_ptr() if num_splits > 1 else 0,
        part_lse=part_lse.data_ptr() if num_splits > 1 else 0,
        batch=batch,
        q_heads=q_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        num_blocks=num_blocks,
        block_size=block_size,
        num_splits=num_splits,
        stride_q_b=q.stride(0),
        stride_q_h=q.stride(1),
        stride_out_b=out.stride(0),
        stride_out_h=out.stride(1),
        stride_table_b=block_tables.stride(0),
        qk_scale=qk_scale,
        v_scale=v_scale,
        q_dtype=_dtype_code(module, q.dtype, "q"),
        cache_dtype=_dtype_code_with_fp8(module, k_cache.dtype, "k_cache"),
        device=device.index,
        stream=_stream(device),
    )
    return out
