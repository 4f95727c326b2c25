"""W4A16 GEMV for decode (M = 1): `out[N] = dequant(W)[N, K] @ x[K] (+ bias)`, fastcot's int4 layout.

Each program streams `BLOCK_N` weight rows over its share of K (`k_per_split`, a whole number
of `BLOCK_K` steps; `BLOCK_K` divides the group size, so a step lies inside one group). Per step
a thread holds 16-byte runs of packed words of several rows, and the arithmetic stays in that
register layout (no shuffles in the loop):

- nibble -> float by the magic-number method: ``(word & (0xF << s)) | ((150 - s) << 23)`` is
  the float ``2**(23 - s) + q`` exactly, so one LOP3 and one FADD give ``q`` (nibbles 4..7 are
  shifted down by 16 once per word);
- ``sum_k x_k q_k`` over the step in float32 (one FFMA per weight), then the group's scale is
  applied once per packed word, not per weight;
- the zero point (or the GGUF minimum) is applied once per group and row after the loop, by
  ``sum_g s_g (P_g - z_g X_g)`` (``sum_g (s_g P_g + m_g X_g)`` with minimums), where ``X_g`` is
  the group's sum of activations: algebraically the same as dequantizing each weight, and in
  float32 throughout.

A split of K is reduced inside the kernel: each program writes its float32 partial row block,
then counts itself in with an atomic on that row block's counter; the program that arrives last
sums the partials in a fixed order (deterministic), adds the bias, stores the output and resets
the counter to zero for the next launch. No second kernel, no memset.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _nibbles_times_x(src, nibble_mask, x_ptr, cols, kmask, SHIFT: tl.constexpr, EVEN_K: tl.constexpr):
    """`q * x` for the nibble at bit `SHIFT` (0, 4, 8, 12) of every word in `src`; `q` exact.
    `nibble_mask` (15) is a runtime value so that mask-and-or compiles to one LOP3 (it takes one
    immediate operand)."""
    magic_bits = (150 - SHIFT) << 23
    bits = (src & (nibble_mask << SHIFT)) | magic_bits
    magic = tl.full([], magic_bits, tl.int32).to(tl.float32, bitcast=True)
    q = bits.to(tl.float32, bitcast=True) - magic
    if EVEN_K:
        x = tl.load(x_ptr + cols, eviction_policy="evict_last")
    else:
        x = tl.load(x_ptr + cols, mask=kmask, other=0.0, eviction_policy="evict_last")
    return q * x.to(tl.float32)[None, :]


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, perm_ptr, bias_ptr, out_ptr, partial_ptr, lock_ptr,
    N, K, words_per_row, k_per_split, nibble_mask,
    GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_MINS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # Rows past N read row N - 1 (never stored): the loads need no mask.
    rows = tl.minimum(offs_n, N - 1)
    w_rows = qweight_ptr + rows.to(tl.int64)[:, None] * words_per_row
    offs_w = tl.arange(0, BLOCK_K // 8)

    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    total = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        word = tl.multiple_of(k0 // 8, BLOCK_K // 8) + offs_w
        kmask = word < words_per_row
        if EVEN_K:
            words = tl.load(w_rows + word[None, :], eviction_policy="evict_first")
        else:
            words = tl.load(w_rows + word[None, :], mask=kmask[None, :], other=0, eviction_policy="evict_first")
        high = words >> 16
        scale = tl.load(scales_ptr + (k0 // GROUP_SIZE) * N + rows).to(tl.float32)
        part = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
        for j in tl.static_range(8):
            if HAS_PERM:
                cols = tl.load(perm_ptr + word * 8 + j, mask=kmask, other=0)
            else:
                cols = word * 8 + j
            if j < 4:
                part += _nibbles_times_x(words, nibble_mask, x_ptr, cols, kmask, 4 * j, EVEN_K)
            else:
                part += _nibbles_times_x(high, nibble_mask, x_ptr, cols, kmask, 4 * (j - 4), EVEN_K)
        total += part * scale[:, None]
    result = tl.sum(total, axis=1)
    result += _zero_term(x_ptr, scales_ptr, zeros_ptr, perm_ptr, rows, N, K, k_start, k_end,
                         GROUP_SIZE, BLOCK_K, HAS_ZEROS, HAS_PERM, HAS_MINS)

    if SPLIT_K == 1:
        if HAS_BIAS:
            result += tl.load(bias_ptr + rows).to(tl.float32)
        tl.store(out_ptr + offs_n, result.to(out_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.store(partial_ptr + pid_k * N + offs_n, result, mask=mask_n)
        # Every thread's partial is written before the (single-thread) release below.
        tl.debug_barrier()
        arrived = tl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for s in range(0, SPLIT_K):
                # .cg: read the other programs' partials from L2, never a stale L1 line.
                acc += tl.load(partial_ptr + s * N + offs_n, mask=mask_n, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rows).to(tl.float32)
            tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)
            tl.atomic_xchg(lock_ptr + pid_n, 0)  # ready for the next launch


@triton.jit
def _zero_term(x_ptr, scales_ptr, zeros_ptr, perm_ptr, rows, N, K, k_start, k_end,
               GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr,
               HAS_ZEROS: tl.constexpr, HAS_PERM: tl.constexpr, HAS_MINS: tl.constexpr):
    """Per row, `-sum_g s_g z_g X_g` (or `+sum_g m_g X_g` with minimums) over the program's
    steps, `X_g` being the step's sum of activations (a step lies inside one group)."""
    term = tl.zeros(rows.shape, dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + offs_k
        if HAS_PERM:
            cols = tl.load(perm_ptr + k, mask=k < K, other=0)
        else:
            cols = k
        xs = tl.sum(tl.load(x_ptr + cols, mask=k < K, other=0.0).to(tl.float32), axis=0)
        g = k0 // GROUP_SIZE
        if HAS_MINS:
            term += tl.load(zeros_ptr + g * N + rows).to(tl.float32) * xs
        else:
            scale = tl.load(scales_ptr + g * N + rows).to(tl.float32)
            if HAS_ZEROS:
                zero = tl.load(zeros_ptr + g * N + rows).to(tl.float32)
            else:
                zero = tl.full(rows.shape, 8.0, dtype=tl.float32)
            term -= scale * zero * xs
    return term
