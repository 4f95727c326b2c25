"""`fastcot.ops.write_kv_cache`: scatter new keys and values into the paged cache."""

from __future__ import annotations

import itertools

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import dense_input, unit_stride_rows
from fastcot.ops._paged_checks import (
    FLOAT_DTYPES,
    FP8,
    check_cache_pair,
    check_scales,
    check_tensor,
    index_checks_enabled,
)


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0) -> None:
    """Write token t's key and value to cache slot `slot_mapping[t]`, in place.

    Args:
        key, value: `[T, num_kv_heads, head_dim]` float16/bfloat16/float32.
        k_cache, v_cache: contiguous `[num_blocks, block_size, num_kv_heads, head_dim]` of key's
            dtype, or `torch.float8_e4m3fn`: then `value / scale` is stored, divided in float32,
            rounded to nearest even, saturated at +-448 (-0 kept), bit for bit torch's
            `(value.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`.
        slot_mapping: `[T]` int32/int64, `block * block_size + offset`; -1 skips the token
            (padding).
        k_scale, v_scale: per-tensor float scales, only for float8 caches.

    Example::

        fastcot.ops.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    """
    num_blocks, block_size, num_kv_heads, head_dim = check_cache_pair(k_cache, v_cache)
    k_scale, v_scale = check_scales(k_scale, v_scale, k_cache.dtype)
    device = k_cache.device
    check_tensor("key", key, dim=3, dtypes=FLOAT_DTYPES, device=device)
    check_tensor("value", value, dim=3, dtypes=(key.dtype,), device=device)
    expected = (key.shape[0], num_kv_heads, head_dim)
    for name, t in (("key", key), ("value", value)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape [T, num_kv_heads, head_dim] = {list(expected)}, got {list(t.shape)}")
    if k_cache.dtype not in (key.dtype, FP8):
        raise TypeError(f"k_cache must have key's dtype {key.dtype} or be float8_e4m3fn, got {k_cache.dtype}")
    check_tensor("slot_mapping", slot_mapping, dim=1, dtypes=(torch.int32, torch.int64), device=device)
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping must have one entry per token ({key.shape[0]}), got {slot_mapping.shape[0]}")
    if key.shape[0] == 0:
        return
    if index_checks_enabled(device):
        lo, hi = int(slot_mapping.min()), int(slot_mapping.max())
        if lo < -1 or hi >= num_blocks * block_size:
            raise ValueError(
                f"slot_mapping values must lie in [-1, {num_blocks * block_size}) "
                f"(-1 skips a token), got [{lo}, {hi}]"
            )
    backend = _backend.resolve("write_kv_cache", device)
    torch.ops.fastcot.write_kv_cache(
        unit_stride_rows(key.reshape(key.shape[0], -1)), unit_stride_rows(value.reshape(value.shape[0], -1)),
        k_cache, v_cache, dense_input(slot_mapping), k_scale, v_scale, backend,
    )


@torch.library.custom_op("fastcot::write_kv_cache", mutates_args=("k_cache", "v_cache"))
def _write_kv_cache_op(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float,
    v_scale: float,
    backend: str,
) -> None:
    """Registered op; key and value arrive flattened to `[T, num_kv_heads * head_dim]`."""
    if backend == "triton":
        _write_triton(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    elif backend == "torch":
        shape = (key.shape[0], k_cache.shape[2], k_cache.shape[3])
        reference.write_kv_cache(key.view(shape), value.view(shape), k_cache, v_cache, slot_mapping, k_scale, v_scale)
    else:
        raise _backend.BackendError(f"backend {backend!r} has no write_kv_cache kernel")


@_write_kv_cache_op.register_fake
def _(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale, backend):
    return None


def _write_triton(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale, *, arch: int | None = None) -> None:
    """Launch the Triton cache write; `arch`: the SM version to build for (default the device's),
    which decides PDL (`_backend.triton_pdl`)."""
    from fastcot.kernels.triton.paged_attention import _write_kv_cache_kernel

    tokens, row_size = key.shape
    block = min(1024, 1 << (row_size - 1).bit_length())
    use_pdl = _backend.triton_pdl(key.device, arch)
    _write_kv_cache_kernel[(tokens, -(-row_size // block))](
        key_ptr=key, value_ptr=value, k_cache_ptr=k_cache, v_cache_ptr=v_cache, slot_mapping_ptr=slot_mapping,
        stride_key_t=key.stride(0), stride_value_t=value.stride(0), row_size=row_size,
        k_scale=k_scale, v_scale=v_scale,
        BLOCK=block, FP8=k_cache.dtype == FP8, USE_PDL=use_pdl,
        num_warps=4, launch_pdl=use_pdl,
    )


def aot_specs():
    """The cache write for 16-bit and float8 caches (Hkv * D = 1024 per token), each also with PDL
    as sm_90 launches it (sm_90 only)."""
    from fastcot.kernels.aot import KernelSpec
    from fastcot.kernels.triton.paged_attention import _write_kv_cache_kernel

    specs = []
    for (src, cache), pdl in itertools.product((("fp16", "fp16"), ("bf16", "bf16"), ("bf16", "fp8e4nv")),
                                               (False, True)):
        specs.append(KernelSpec(
            name=f"write_kv_cache {src} -> {cache}{' pdl' if pdl else ''}", fn=_write_kv_cache_kernel,
            num_warps=4, num_stages=1,
            signature={"key_ptr": f"*{src}", "value_ptr": f"*{src}", "k_cache_ptr": f"*{cache}",
                       "v_cache_ptr": f"*{cache}", "slot_mapping_ptr": "*i32", "stride_key_t": "i32",
                       "stride_value_t": "i32", "row_size": "i32", "k_scale": "fp32", "v_scale": "fp32"},
            constexprs={"BLOCK": 1024, "FP8": cache == "fp8e4nv", "USE_PDL": pdl},
            aligned=("key_ptr", "value_ptr", "k_cache_ptr", "v_cache_ptr", "stride_key_t", "stride_value_t", "row_size"),
            archs=(90,) if cache == "fp8e4nv" or pdl else (80, 90),
        ))
    return specs
