"""`fastcot.ops.int4_dequantize`: unpack an `Int4Weight` to a float matrix on the device."""

from __future__ import annotations

from typing import Optional

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_written
from fastcot.quant.int4 import Int4Weight

OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def int4_dequantize(weight: Int4Weight, dtype: torch.dtype | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """The float `[N, K]` matrix an `Int4Weight` stands for, in input-channel order.

    Equal, bit for bit, to `weight.dequantize(dtype)`: `(q - zero) * scale` in float32, rounded
    once to nearest even, done by a kernel on the weight's device. That holds for every dtype on
    every backend on a GPU (the Triton kernel's float32 -> bfloat16 store compiles to
    `cvt.rn.bf16.f32`) and for the torch backend. One exception, on the CPU only: Triton's
    interpreter (`TRITON_INTERPRET=1`) converts float32 to bfloat16 by truncation, so a bfloat16
    result of the triton backend there may be one bfloat16 step closer to zero.

    `dtype` (float16/bfloat16/float32) defaults to the scales' dtype; `out`, if given, is a
    contiguous `[N, K]` tensor of that dtype on the weight's device.

    Example::

        w16 = fastcot.ops.int4_dequantize(qw, torch.float16)   # e.g. to hand to cuBLAS
    """
    if not isinstance(weight, Int4Weight):
        raise TypeError(f"weight must be a fastcot.Int4Weight, got {type(weight).__name__}")
    if dtype is None:
        dtype = out.dtype if isinstance(out, torch.Tensor) else weight.scales.dtype
    if dtype not in OUT_DTYPES:
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    if out is None:
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    else:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if tuple(out.shape) != tuple(weight.shape):
            raise ValueError(f"out must have shape [N, K] = {list(weight.shape)}, got {list(out.shape)}")
        if out.dtype != dtype:
            raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
        if out.device != weight.device:
            raise ValueError(f"out is on {out.device} but weight is on {weight.device}")
        check_written("out", out)
    backend = _backend.resolve("int4_dequantize", weight.device)
    if backend == "cuda":
        from fastcot.ops.int4_matmul import check_cuda_mins

        check_cuda_mins(weight.mins)
    torch.ops.fastcot.int4_dequantize(
        weight.qweight, weight.scales, weight.zeros, weight.perm, weight.group_size, out, backend, weight.mins
    )
    return out


@torch.library.custom_op("fastcot::int4_dequantize", mutates_args=("out",))
def _int4_dequantize_op(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    perm: Optional[torch.Tensor],
    group_size: int,
    out: torch.Tensor,
    backend: str,
    mins: Optional[torch.Tensor] = None,
) -> None:
    """Registered op: write the dequantized `[N, K]` weight into `out` with the named backend."""
    if backend == "triton":
        from fastcot.ops.int4_matmul import int4_dequantize_triton

        int4_dequantize_triton(qweight, scales, zeros, perm, group_size, out, mins=mins)
    elif backend == "cuda":
        from fastcot.kernels import cuda
        from fastcot.ops.int4_matmul import check_cuda_mins

        check_cuda_mins(mins)
        cuda.int4_dequantize(qweight, scales, zeros, perm, group_size, out)
    elif backend == "torch":
        out.copy_(reference.int4_dequantize(qweight, scales, zeros, perm, group_size, out.dtype, mins=mins))
    else:
        raise _backend.BackendError(f"backend {backend!r} has no int4_dequantize kernel")


@_int4_dequantize_op.register_fake
def _(qweight, scales, zeros, perm, group_size, out, backend, mins=None):
    return None
