"""Argument checks shared by the paged KV-cache ops, run before any kernel.

Shape, dtype and device checks are free. Checks of index *values* (slots, block-table
entries, lengths) read device memory, which costs a host synchronization on a GPU; they run
unless `FASTCOT_INDEX_CHECKS=0`, and are skipped automatically inside CUDA-graph capture and
torch.compile tracing, where a synchronization is impossible.
"""

from __future__ import annotations

import math
import os

import torch

FP8 = torch.float8_e4m3fn
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_SIZES = tuple(2**i for i in range(3, 9))  # 8 .. 256


def index_checks_enabled(device: torch.device) -> bool:
    if os.environ.get("FASTCOT_INDEX_CHECKS", "1") == "0" or torch.compiler.is_compiling():
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_tensor(name: str, t, *, dim: int | None = None, dtypes=None, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the cache is on {device}")


def check_cache_pair(k_cache, v_cache) -> tuple[int, int, int, int]:
    """Validate the caches; returns (num_blocks, block_size, num_kv_heads, head_dim)."""
    check_tensor("k_cache", k_cache, dim=4, dtypes=FLOAT_DTYPES + (FP8,))
    check_tensor("v_cache", v_cache, dim=4, dtypes=(k_cache.dtype,), device=k_cache.device)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {list(k_cache.shape)}, got {list(v_cache.shape)}")
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size (k_cache.shape[1]) must be a power of two from 8 to 256, got {block_size}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not cache.is_contiguous():
            raise ValueError(f"{name} must be contiguous [num_blocks, block_size, num_kv_heads, head_dim] "
                             f"(caches are never copied); got strides {list(cache.stride())}")
    return num_blocks, block_size, num_kv_heads, head_dim


def check_scales(k_scale, v_scale, cache_dtype: torch.dtype) -> tuple[float, float]:
    for name, value in (("k_scale", k_scale), ("v_scale", v_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and positive, got {value}")
        if cache_dtype != FP8 and value != 1.0:
            raise ValueError(f"{name}={value} applies only to float8_e4m3fn caches; this cache is {cache_dtype}")
    return float(k_scale), float(v_scale)


def check_query_dtype(q: torch.Tensor, cache_dtype: torch.dtype) -> None:
    if cache_dtype != FP8 and q.dtype != cache_dtype:
        raise TypeError(f"q must have the cache's dtype {cache_dtype} (or the cache be float8_e4m3fn), got {q.dtype}")


def check_heads(q_heads: int, num_kv_heads: int, q_dim: int, head_dim: int) -> None:
    if q_dim != head_dim:
        raise ValueError(f"q's head_dim {q_dim} does not match the cache's head_dim {head_dim}")
    if q_heads % num_kv_heads != 0:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")


def check_block_tables(block_tables, seq_lens, batch: int, num_blocks: int, block_size: int, device) -> None:
    check_tensor("block_tables", block_tables, dim=2, dtypes=(torch.int32,), device=device)
    check_tensor("seq_lens", seq_lens, dim=1, dtypes=(torch.int32,), device=device)
    if block_tables.shape[0] != batch:
        raise ValueError(f"block_tables must have {batch} rows (one per sequence), got {block_tables.shape[0]}")
    if seq_lens.shape[0] != batch:
        raise ValueError(f"seq_lens must have {batch} entries, got {seq_lens.shape[0]}")
    if batch == 0 or not index_checks_enabled(device):
        return
    capacity = block_tables.shape[1] * block_size
    lo, hi = int(seq_lens.min()), int(seq_lens.max())
    if lo < 0:
        raise ValueError(f"seq_lens must be >= 0, got {lo}")
    if hi > capacity:
        raise ValueError(
            f"block_tables are too short: {block_tables.shape[1]} blocks of {block_size} hold {capacity} "
            f"tokens but seq_lens has {hi}"
        )
    needed = (seq_lens.long() + block_size - 1) // block_size
    used = torch.arange(block_tables.shape[1], device=device)[None, :] < needed[:, None]
    bad = used & ((block_tables < 0) | (block_tables >= num_blocks))
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"block_tables[{row}, {col}] = {int(block_tables[row, col])} is not a block of this cache "
            f"(num_blocks={num_blocks})"
        )
