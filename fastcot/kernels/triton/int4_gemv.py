"""W4A16 GEMV for decode (M = 1): `out[N] = dequant(W)[N, K] @ x[K] (+ bias)`, fastcot's int4 layout.

Each program streams `BLOCK_N` weight rows over its share of K (`k_per_split`, a whole number
of `BLOCK_K` steps; `BLOCK_K` divides the group size, so a step lies inside one group). Per step
a thread holds 32-nibble runs (one 16-byte load: 4 packed words) of several rows, and the 32
activations of that run (64 contiguous bytes); the arithmetic stays in that register
layout (no shuffles or shared memory in the loop):

- nibble -> float for free: ``word & (0xF << s)``, read as a float32, is the *subnormal*
  ``q * 2**(s - 149)``, exact. The activation it meets is pre-scaled by ``2**(149 - s - 60)``
  (a power of two, exact), so one LOP3 and one FFMA per weight accumulate ``q * x * 2**-60``
  with exact products and float32 sums (``FFMA`` keeps subnormal inputs; nibbles 5..7 sit
  on the exponent field and are shifted down by 12 once per word). The 2**-60 keeps every
  product of a 16-bit activation in the normal range and every scaled activation below 2**38.
- the group's scale is applied once per row and 32-weight run, the zero point (or the GGUF
  minimum) through the run's sum of activations: ``s * (sum x q - z sum x)`` is the same
  algebra as dequantizing each weight, in float32 throughout.
- each half-step's words are reloaded with the next step's as soon as they are used (two
  half-step buffers in registers), so every load has a whole step to land.
- 16-bit activations are read as int32 pairs, each thread the 32 of its run, already in the
  registers that use them; two instructions make both floats (a shift and a mask for bfloat16,
  the hardware's half-to-float conversion of each half for float16).

On sm_90 the kernel is launched with programmatic dependent launch (`fastcot.kernels.pdl`):
the first step's words load, and its scales and zeros are fetched into L2, before the wait for
the previous kernel (whose output x is).

A split of K is reduced inside the kernel: each program writes its float32 partial row block,
then counts itself in with an atomic on that row block's counter; the program that arrives last
sums the partials in a fixed order (deterministic), adds the bias, stores the output and resets
the counter to zero for the next launch. No second kernel, no memset.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait, prefetch_l2

# Products are accumulated as q * x * 2**ACC_EXP: see the module docstring.
ACC_EXP = -60


@triton.jit
def _split8(t, C: tl.constexpr):
    """`t[C, 4, 8]` -> its eight `[C, 4]` slices along the last axis (register renames)."""
    even, odd = tl.split(tl.reshape(t, (C, 4, 4, 2)))
    e0, e1 = tl.split(tl.reshape(even, (C, 4, 2, 2)))
    o0, o1 = tl.split(tl.reshape(odd, (C, 4, 2, 2)))
    t0, t4 = tl.split(e0)
    t2, t6 = tl.split(e1)
    t1, t5 = tl.split(o0)
    t3, t7 = tl.split(o1)
    return t0, t1, t2, t3, t4, t5, t6, t7


@triton.jit
def _acc_nibble(acc, src, x, SHIFT: tl.constexpr):
    """`acc + q * x * 2**ACC_EXP` for the nibble at bit `SHIFT` (0..16) of every word in `src`;
    `x` is its column's activation (the power of two is an exact constant multiply)."""
    q_sub = (src & (0xF << SHIFT)).to(tl.float32, bitcast=True)  # q * 2**(SHIFT - 149), exact
    return acc + q_sub * (x * (2.0 ** (89 - SHIFT)))[None, :, :]


@triton.jit
def _unpair(p, X_DTYPE: tl.constexpr):
    """The two 16-bit floats packed in int32 `p` (low half first), as float32, exactly: bfloat16
    ones are `bits << 16` and `bits & 0xFFFF0000`; float16 ones take one conversion each (ptxas
    folds the truncation and the shift into its half selector: `HADD2.F32 d, -RZ, p.H1_H1`)."""
    if X_DTYPE == tl.bfloat16:
        return (p << 16).to(tl.float32, bitcast=True), (p & -65536).to(tl.float32, bitcast=True)
    lo = p.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (p >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _run_dot(acc, words, xv, C: tl.constexpr, X_PAIRS: tl.constexpr, X_DTYPE: tl.constexpr):
    """Adds `sum x q` (times 2**ACC_EXP) of each row and 32-nibble run to `acc [BLOCK_N, C, 4]`,
    for `words [BLOCK_N, C, 4]` and their activations `xv` (see `_load_x`); returns it and each
    run's sum of activations `[C]` (also times 2**ACC_EXP)."""
    if X_PAIRS:  # `X_DTYPE` pairs in int32
        even, odd = tl.split(tl.reshape(xv, (C, 4, 2, 2)))
        p0, p2 = tl.split(even)
        p1, p3 = tl.split(odd)
        x0, x1 = _unpair(p0, X_DTYPE)
        x2, x3 = _unpair(p1, X_DTYPE)
        x4, x5 = _unpair(p2, X_DTYPE)
        x6, x7 = _unpair(p3, X_DTYPE)
    else:
        x0, x1, x2, x3, x4, x5, x6, x7 = _split8(tl.reshape(xv.to(tl.float32), (C, 4, 8)), C)
    x_run = tl.sum(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), axis=1) * (2.0 ** -60)
    high = words >> 12  # nibbles 5, 6, 7 to bits 8, 12, 16
    acc = _acc_nibble(acc, words, x0, 0)
    acc = _acc_nibble(acc, words, x1, 4)
    acc = _acc_nibble(acc, words, x2, 8)
    acc = _acc_nibble(acc, words, x3, 12)
    acc = _acc_nibble(acc, words, x4, 16)
    acc = _acc_nibble(acc, high, x5, 8)
    acc = _acc_nibble(acc, high, x6, 12)
    acc = _acc_nibble(acc, high, x7, 16)
    return acc, x_run


@triton.jit
def _load_words(w_rows, k, words_per_row, C: tl.constexpr, EVEN_K: tl.constexpr):
    """The packed words of one half-step at column `k`, as `[BLOCK_N, C, 4]`."""
    word = tl.multiple_of(k // 8, 4) + tl.arange(0, C * 4)
    if EVEN_K:
        words = tl.load(w_rows + word[None, :], eviction_policy="evict_first")
    else:
        words = tl.load(w_rows + word[None, :], mask=(word < words_per_row)[None, :], other=0,
                        eviction_policy="evict_first")
    return tl.reshape(words, (words.shape[0], C, 4))


@triton.jit
def _load_x(x_ptr, perm_ptr, k, K, C: tl.constexpr, EVEN_K: tl.constexpr, HAS_PERM: tl.constexpr,
            X_PAIRS: tl.constexpr):
    """The activations of one half-step at column `k` (zero past K): `[C * 32]` as loaded, or
    with `X_PAIRS` (16-bit x read as int32) `[C * 16]` packed pairs."""
    if X_PAIRS:
        offs = k // 2 + tl.arange(0, C * 16)
        inside = offs < K // 2
    else:
        offs = k + tl.arange(0, C * 32)
        inside = offs < K
        if HAS_PERM:
            offs = tl.load(perm_ptr + offs, mask=inside, other=0)
    if EVEN_K:
        xv = tl.load(x_ptr + offs, eviction_policy="evict_last")
    else:
        xv = tl.load(x_ptr + offs, mask=inside, other=0, eviction_policy="evict_last")
    return xv


@triton.jit
def _load_group(scales_ptr, zeros_ptr, rows, N, g, valid, EVEN_K: tl.constexpr, HAS_ZEROS: tl.constexpr):
    """Group `g`'s float32 scale and zero point (or minimum) of each row, `[BLOCK_N, 1]` (loaded
    in the layout of the rows' sums); zeros for a half-step past K (`valid` false)."""
    offs = g * N + rows[:, None]
    if EVEN_K:
        scale = tl.load(scales_ptr + offs, eviction_policy="evict_first")
    else:
        scale = tl.load(scales_ptr + offs, mask=valid, other=0.0, eviction_policy="evict_first")
    if HAS_ZEROS:
        if EVEN_K:
            zero = tl.load(zeros_ptr + offs, eviction_policy="evict_first")
        else:
            zero = tl.load(zeros_ptr + offs, mask=valid, other=0.0, eviction_policy="evict_first")
    else:
        zero = scale
    return scale.to(tl.float32), zero.to(tl.float32)


@triton.jit
def _fold(total, acc, x_sum, scale, zero, HAS_ZEROS: tl.constexpr, HAS_MINS: tl.constexpr):
    """`total += s * (sum x q - z * sum x)` per row (`s * sum x q + m * sum x` with minimums),
    for one group's run sums `acc [BLOCK_N, C, 4]` and activation sums `x_sum [C]`."""
    dot = tl.sum(acc, axis=2)  # inside each thread
    if HAS_MINS:
        return total + dot * scale + zero * x_sum[None, :]
    if HAS_ZEROS:
        return total + (dot - zero * x_sum[None, :]) * scale
    return total + (dot - 8.0 * x_sum[None, :]) * scale


@triton.jit
def _prefetch_step(scales_ptr, zeros_ptr, pid_n, k0, N, K, BLOCK_N: tl.constexpr, GROUP_SIZE: tl.constexpr,
                   HALF: tl.constexpr, HAS_ZEROS: tl.constexpr, ONE_GROUP: tl.constexpr):
    """Fetch into L2 the scales and zeros of the step at `k0` (one address per 128-byte line of
    64 rows). Before the grid-dependency wait: no earlier kernel writes them."""
    lines = tl.minimum(pid_n * BLOCK_N + tl.arange(0, (BLOCK_N + 63) // 64) * 64, N - 1)
    groups = K // GROUP_SIZE
    offs = tl.minimum(k0 // GROUP_SIZE, groups - 1) * N + lines
    prefetch_l2(scales_ptr + offs)
    if HAS_ZEROS:
        prefetch_l2(zeros_ptr + offs)
    if not ONE_GROUP:
        offs = tl.minimum((k0 + HALF) // GROUP_SIZE, groups - 1) * N + lines
        prefetch_l2(scales_ptr + offs)
        if HAS_ZEROS:
            prefetch_l2(zeros_ptr + offs)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, perm_ptr, bias_ptr, out_ptr, partial_ptr, lock_ptr,
    N, K, words_per_row, k_per_split,
    GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_MINS: tl.constexpr, X_PAIRS: tl.constexpr = False, USE_PDL: tl.constexpr = False,
):
    HALF: tl.constexpr = BLOCK_K // 2  # a step is two half-steps: see the loop
    C: tl.constexpr = HALF // 32  # 32-nibble runs per row and half-step
    ONE_GROUP: tl.constexpr = GROUP_SIZE >= BLOCK_K  # else each half-step is its own group
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # Rows past N read row N - 1 (never stored): the loads need no row mask.
    rows = tl.minimum(offs_n, N - 1)
    w_rows = qweight_ptr + rows.to(tl.int64)[:, None] * words_per_row
    # The scales and zeros of the rows: a multiply by a runtime one hides their contiguity from the
    # compiler, which then loads them one per thread and row, already in the rows' register layout
    # when each row's run is one thread's (C = 1), instead of 16-byte loads and a shared-memory
    # shuffle each step.
    sz_rows = rows * ((N + 1) // (N + 1))

    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    total = tl.zeros((BLOCK_N, C), dtype=tl.float32)  # in units of 2**ACC_EXP
    words_a = _load_words(w_rows, k_start, words_per_row, C, EVEN_K)
    words_b = _load_words(w_rows, k_start + HALF, words_per_row, C, EVEN_K)
    # With PDL the previous kernel may still be running: x (its output) is read, and anything is
    # written, only after the wait; the first step's words are loaded before it, its scales and
    # zeros fetched into L2.
    if USE_PDL:
        gdc_launch_dependents()
        _prefetch_step(scales_ptr, zeros_ptr, pid_n, k_start, N, K, BLOCK_N, GROUP_SIZE, HALF,
                       HAS_ZEROS or HAS_MINS, ONE_GROUP)
        gdc_wait()
    # Two half-step buffers, each reloaded with the next step's half as soon as it is used: every
    # load has a whole step to land, no register copies, and a program of one or two steps has
    # its first step's words all in flight at once.
    for k0 in range(k_start, k_end, BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        scale_a, zero_a = _load_group(scales_ptr, zeros_ptr, sz_rows, N, k0 // GROUP_SIZE, True, EVEN_K,
                                      HAS_ZEROS or HAS_MINS)
        if not ONE_GROUP:
            scale_b, zero_b = _load_group(scales_ptr, zeros_ptr, sz_rows, N, (k0 + HALF) // GROUP_SIZE,
                                          k0 + HALF < K, EVEN_K, HAS_ZEROS or HAS_MINS)
        # The last step loads its own words again (L2 hits) rather than masked loads.
        k_next = tl.minimum(k0 + BLOCK_K, k_end - 1) // BLOCK_K * BLOCK_K
        acc = tl.zeros((BLOCK_N, C, 4), dtype=tl.float32)
        acc, x_sum = _run_dot(acc, words_a, _load_x(x_ptr, perm_ptr, k0, K, C, EVEN_K, HAS_PERM, X_PAIRS), C,
                              X_PAIRS, out_ptr.dtype.element_ty)
        words_a = _load_words(w_rows, k_next, words_per_row, C, EVEN_K)
        if not ONE_GROUP:
            total = _fold(total, acc, x_sum, scale_a, zero_a, HAS_ZEROS, HAS_MINS)
            acc = tl.zeros((BLOCK_N, C, 4), dtype=tl.float32)
        acc, x_sum_b = _run_dot(acc, words_b, _load_x(x_ptr, perm_ptr, k0 + HALF, K, C, EVEN_K, HAS_PERM, X_PAIRS), C,
                                X_PAIRS, out_ptr.dtype.element_ty)
        words_b = _load_words(w_rows, k_next + HALF, words_per_row, C, EVEN_K)
        if ONE_GROUP:  # the whole step lies in one group
            total = _fold(total, acc, x_sum + x_sum_b, scale_a, zero_a, HAS_ZEROS, HAS_MINS)
        else:
            total = _fold(total, acc, x_sum_b, scale_b, zero_b, HAS_ZEROS, HAS_MINS)
    result = tl.sum(total, axis=1) * (2.0 ** 60)

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
            acc_out = tl.zeros((BLOCK_N,), dtype=tl.float32)
            # The bound is a runtime value so the compiler does not unroll SPLIT_K loads.
            for s in range(0, SPLIT_K):
                # .cg: read the other programs' partials from L2, never a stale L1 line.
                acc_out += tl.load(partial_ptr + s * N + offs_n, mask=mask_n, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                acc_out += tl.load(bias_ptr + rows).to(tl.float32)
            tl.store(out_ptr + offs_n, acc_out.to(out_ptr.dtype.element_ty), mask=mask_n)
            tl.atomic_xchg(lock_ptr + pid_n, 0)  # ready for the next launch
