"""Rotary position embedding of q and k, HF Llama "rotate_half" (neox) convention, full head dim.

Grid: (token, block of heads); the q heads' blocks come first, then k's. Each program computes
the cosine and sine of its token's angles itself (no cos/sin cache, so no limit on positions)
and rotates `BLOCK_HEADS` heads of q or k.

Why the angle is not `position * inv_freq` in float32: at position 131000 that product has an
ulp of 2^-7 rad, and libdevice's large-argument `cosf` path keeps a stack array (it shows as a
spill). Instead the host gives, per frequency, `turns = round(inv_freq / 2pi * 2^64)`; the
kernel multiplies it by the integer position in uint64 (wrapping mod 2^64 drops whole turns
exactly), takes the quadrant from the top two bits and evaluates short polynomials on the
remainder in [-pi/4, pi/4). The phase is exact up to the table's rounding (under 2^-33 turn
for any int32 position); what is left is float32 rounding of the remainder, below 1e-7 rad.
Only plain arithmetic is used, so the interpreter runs the same code.

With USE_PDL (sm_90, `fastcot.kernels.pdl`) the kernel waits for the previous kernel (the q/k/v
projection writes q and k) before its first global access.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _cos_sin_of_turns(phase):
    """cos and sin (float32) of the angle `2pi * phase / 2^64`, phase a uint64 fraction of a turn."""
    shifted = phase + (1 << 61)  # quadrant k covers [k - 1/2, k + 1/2) quarter turns
    quadrant = (shifted >> 62).to(tl.int32)
    rem = (shifted & ((1 << 62) - 1)).to(tl.int64, bitcast=True) - (1 << 61)
    r = rem.to(tl.float32) * 3.4061215800865545e-19  # 2pi / 2^64: r in [-pi/4, pi/4)
    r2 = r * r
    # Taylor series: truncation error below 2e-9 on [-pi/4, pi/4], under fp32 rounding.
    sin_r = r + r * r2 * (-1.6666666666666666e-1 + r2 * (8.3333333333333332e-3 + r2 * (
        -1.9841269841269841e-4 + r2 * 2.7557319223985893e-6)))
    cos_r = 1.0 + r2 * (-0.5 + r2 * (4.1666666666666664e-2 + r2 * (-1.3888888888888889e-3 + r2 * (
        2.4801587301587302e-5 + r2 * -2.7557319223985888e-7))))
    swap = (quadrant & 1) == 1
    cos_abs = tl.where(swap, sin_r, cos_r)
    sin_abs = tl.where(swap, cos_r, sin_r)
    cos = tl.where((quadrant == 1) | (quadrant == 2), -cos_abs, cos_abs)
    sin = tl.where(quadrant >= 2, -sin_abs, sin_abs)
    return cos, sin


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr, first_head, num_heads, stride_xh, stride_oh, cos, sin, offs_d, mask_d,
    HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr,
):
    """Rotate heads `[first_head, first_head + BLOCK_HEADS)` of one token (pointers at the token)."""
    heads = first_head + tl.arange(0, BLOCK_HEADS)
    mask = (heads < num_heads)[:, None] & mask_d[None, :]
    x_first = x_ptr + heads.to(tl.int64)[:, None] * stride_xh + offs_d[None, :]
    out_first = out_ptr + heads.to(tl.int64)[:, None] * stride_oh + offs_d[None, :]
    x1 = tl.load(x_first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_first + HALF, mask=mask, other=0.0).to(tl.float32)
    out_dtype = out_ptr.dtype.element_ty
    tl.store(out_first, (x1 * cos[None, :] - x2 * sin[None, :]).to(out_dtype), mask=mask)
    tl.store(out_first + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(out_dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr, turns_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr,
    num_q_heads, num_kv_heads,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_q_out_t, stride_q_out_h, stride_k_out_t, stride_k_out_h,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask_d = offs_d < HALF
    position = tl.load(positions_ptr + token).to(tl.int64).to(tl.uint64, bitcast=True)
    turns = tl.load(turns_ptr + offs_d, mask=mask_d, other=0).to(tl.uint64, bitcast=True)
    cos, sin = _cos_sin_of_turns(position * turns)
    q_blocks = tl.cdiv(num_q_heads, BLOCK_HEADS)
    if head_block < q_blocks:
        _rotate_heads(
            q_ptr + token * stride_qt, q_out_ptr + token * stride_q_out_t, head_block * BLOCK_HEADS,
            num_q_heads, stride_qh, stride_q_out_h, cos, sin, offs_d, mask_d, HALF, BLOCK_HEADS,
        )
    else:
        _rotate_heads(
            k_ptr + token * stride_kt, k_out_ptr + token * stride_k_out_t, (head_block - q_blocks) * BLOCK_HEADS,
            num_kv_heads, stride_kh, stride_k_out_h, cos, sin, offs_d, mask_d, HALF, BLOCK_HEADS,
        )
