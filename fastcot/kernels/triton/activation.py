"""SiLU-and-multiply for the gated MLP: `out[..., I] = silu(x[..., :I]) * x[..., I:]`.

A 2-D grid of (row, column block); float32 math, one rounding to the output dtype. With USE_PDL
(sm_90, `fastcot.kernels.pdl`) the kernel waits for the previous kernel (the gate/up projection
writes x) before its first global access.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, I, stride_x, stride_out,
    BLOCK: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    x_row = x_ptr + row * stride_x
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + I + cols, mask=mask, other=0.0).to(tl.float32)
    # exp(-gate) overflows to inf for gate < -88: gate / inf is the correct limit, -0.
    silu = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * stride_out + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)
