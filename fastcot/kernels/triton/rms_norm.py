"""RMSNorm over rows, optionally fused with the residual add before it (HF LlamaRMSNorm numerics).

One program normalizes one row held entirely in registers (`BLOCK_H` = the next power of two of
the hidden size), so the row is read once and the residual stream written once. All math is
float32; the two roundings HF makes are kept on purpose: the new residual stream is stored in
the activation dtype and normalized as stored, and the normalized row is rounded to the
activation dtype before the weight multiply.

With USE_PDL (sm_90, `fastcot.kernels.pdl`) the kernel is launched with programmatic dependent
launch and waits for the previous kernel before its first global access: every input may be
that kernel's output.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr,
    H, stride_x, stride_residual, stride_out, eps,
    BLOCK_H: tl.constexpr, HAS_RESIDUAL: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual_row = residual_ptr + row * stride_residual + cols
        residual = tl.load(residual_row, mask=mask, other=0.0).to(tl.float32)
        h = (x + residual).to(residual_ptr.dtype.element_ty)
        tl.store(residual_row, h, mask=mask)
        x = h.to(tl.float32)  # normalize the stream as stored, as HF does
    variance = tl.sum(x * x, axis=0) / H
    rstd = tl.rsqrt(variance + eps)
    normed = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (weight * normed).to(out_ptr.dtype.element_ty), mask=mask)
