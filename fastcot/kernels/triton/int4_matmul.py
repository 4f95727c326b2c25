"""W4A16 matmul: `out[M, N] = x[M, K] @ dequant(W)[N, K].T (+ bias)` over fastcot's int4 layout.

One kernel serves every M > 1 (M = 1 is the GEMV of `int4_gemv.py`): tensor-core ``tl.dot``
tiles of ``BLOCK_M >= 16`` rows. Decode sizes (M <= 64) pad M to one tile and split K; prefill
sizes use large tiles with a grouped launch order for L2 reuse.
Weights are dequantized in registers right before use, in float32 exactly as the reference
does, and accumulated in float32. A split of K writes float32 partials that the last program
of each 16-row tile, or a second small kernel for wider tiles, sums in a fixed order
(deterministic, unlike atomic adds), adding the bias and rounding once. With
``HAS_MINS`` the zero-point pointer holds float minimums per group in the weight domain
(GGUF Q4_1) and ``w = q * scale + min``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait, prefetch_l2


@triton.jit
def _group_scale_zero(scales_ptr, zeros_ptr, group, N, offs_n, mask_n, HAS_ZEROS: tl.constexpr):
    """float32 scale and zero point of rows `offs_n` in one group (zero 8 when symmetric)."""
    scale = tl.load(scales_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        zero = tl.full(scale.shape, 8.0, dtype=tl.float32)
    return scale, zero


@triton.jit
def _biased_words(words, BF16: tl.constexpr):
    """Four int32s per packed word: t_j holds nibbles j and j + 4 in the top mantissa bits of its
    two halves, whose exponent is 16's (`0x4C00 | q << 6` is float16 `16 + q`, `0x4180 | q << 3`
    bfloat16 `16 + q`, both exact): four shifts and four mask-and-ORs, no conversions."""
    if BF16:
        S: tl.constexpr = 3
        MASK: tl.constexpr = 0x00780078
        MAGIC: tl.constexpr = 0x41804180
    else:
        S: tl.constexpr = 6
        MASK: tl.constexpr = 0x03C003C0
        MAGIC: tl.constexpr = 0x4C004C00
    t0 = ((words << S) & MASK) | MAGIC
    t1 = ((words >> (4 - S)) & MASK) | MAGIC if S < 4 else ((words << (S - 4)) & MASK) | MAGIC
    t2 = ((words >> (8 - S)) & MASK) | MAGIC
    t3 = ((words >> (12 - S)) & MASK) | MAGIC
    return t0, t1, t2, t3


@triton.jit
def _halves(t, FLOAT: tl.constexpr):
    """The two 16-bit floats of int32 `t`, low half first, joined on a new last axis."""
    lo = (t & 0xFFFF).to(tl.int16).to(FLOAT, bitcast=True)
    hi = (t >> 16).to(tl.int16).to(FLOAT, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def _biased_weights(words, BF16: tl.constexpr):
    """`16 + q` in 16-bit floats, `[BLOCK_N, 8 * W]` in column order, from `words [BLOCK_N, W]`
    (`_biased_words`' halves)."""
    FLOAT: tl.constexpr = tl.bfloat16 if BF16 else tl.float16
    t0, t1, t2, t3 = _biased_words(words, BF16)
    # [.., h, a, b] holds nibble 4h + 2a + b: the joins' order puts the columns in order.
    p0 = _halves(t0, FLOAT)
    p1 = _halves(t1, FLOAT)
    p2 = _halves(t2, FLOAT)
    p3 = _halves(t3, FLOAT)
    w = tl.join(tl.join(p0, p2), tl.join(p1, p3))
    return tl.reshape(w, (words.shape[0], words.shape[1] * 8))


@triton.jit
def _mma_order_weights(words, BF16: tl.constexpr):
    """`16 + q` in 16-bit floats, `[8 * W, BLOCK_N]` (the dot's B operand), from `words
    [BLOCK_N, W]` (W a multiple of 4), rows in the order of `_mma_order_x`. Each int32 t_j (as
    in `_biased_words`) holds nibbles j and j + 4 of a word: one operand register. A thread
    loads a run of W / 4 words of a column (16 bytes when W = 16), and the rows are ordered
    so that those are the K indices the mma.sync operand layout (kWidth 4: lane c of a quad
    holds K 4c..4c+3 and 16+4c..16+4c+3 of every 32) gives it: joins, permute and reshape only
    rename registers, and the tile reaches `tl.dot` without shared memory or shuffles."""
    FLOAT: tl.constexpr = tl.bfloat16 if BF16 else tl.float16
    BN: tl.constexpr = words.shape[0]
    W: tl.constexpr = words.shape[1]
    w3 = tl.reshape(words, (BN, 4, W // 4))  # [n, c, r]: word c * W / 4 + r
    t0, t1, t2, t3 = _biased_words(w3, BF16)
    p0 = _halves(t0, FLOAT)
    p1 = _halves(t1, FLOAT)
    p2 = _halves(t2, FLOAT)
    p3 = _halves(t3, FLOAT)
    w = tl.join(tl.join(p0, p1), tl.join(p2, p3))  # [n, c, r, h, jlo, jhi]: nibble 2 jhi + jlo + 4 h
    w = tl.permute(w, (2, 5, 1, 4, 3, 0))  # [r, jhi, c, jlo, h, n]
    return tl.reshape(w, (8 * W, BN))


@triton.jit
def _mma_order_x(x):
    """`x [BLOCK_M, BLOCK_K]`'s columns in the order of `_mma_order_weights`' rows: column
    32 r + 16 jhi + 4 c + 2 jlo + h is input channel 8 (c * BLOCK_K / 32 + r) + 2 jhi + jlo + 4 h.
    x is loaded contiguously; permute and reshape only rename registers."""
    BM: tl.constexpr = x.shape[0]
    BK: tl.constexpr = x.shape[1]
    x6 = tl.reshape(x, (BM, 4, BK // 32, 2, 2, 2))  # [m, c, r, h, jhi, jlo]
    return tl.reshape(tl.permute(x6, (0, 2, 4, 1, 5, 3)), (BM, BK))


@triton.jit
def _prefetch_steps(qweight_ptr, scales_ptr, zeros_ptr, offs_n, row0, k_start, k_end, N, words_per_row, num_groups,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr):
    """Fetch into L2 the weights, scales and zeros of the first two steps from `k_start` (those the
    pipeline's prologue loads), before the grid-dependency wait: no earlier kernel writes them.
    The prologue's own loads come after the wait (Triton issues them right before the loop)."""
    rows = tl.minimum(offs_n, N - 1).to(tl.int64) * words_per_row
    lines = tl.minimum(row0 + tl.arange(0, (BLOCK_N + 63) // 64) * 64, N - 1)
    for step in tl.static_range(2):
        k0 = tl.minimum(k_start + step * BLOCK_K, k_end - 1)
        # A row's step is BLOCK_K / 2 bytes: one address per 64 bytes.
        for part in tl.static_range(0, BLOCK_K // 8, 16):
            prefetch_l2(qweight_ptr + rows + (k0 // 8 + part))
        offs = tl.minimum(k0 // GROUP_SIZE, num_groups - 1).to(tl.int64) * N + lines
        prefetch_l2(scales_ptr + offs)
        if HAS_ZEROS:
            prefetch_l2(zeros_ptr + offs)


@triton.jit
def _int4_matmul_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, perm_ptr, bias_ptr, out_ptr, partial_ptr, lock_ptr,
    M, N, K, words_per_row, stride_xm, stride_om, k_per_split,
    GROUP_SIZE: tl.constexpr, TILE_GROUPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_ZEROS: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    IEEE_FP32: tl.constexpr, DEQUANT_NATIVE: tl.constexpr, HAS_MINS: tl.constexpr,
    BIASED_DOT: tl.constexpr = False, FUSED_REDUCE: tl.constexpr = False, USE_PDL: tl.constexpr = False,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: consecutive programs share a band of x rows and reuse weight tiles in L2.
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    x_rows = x_ptr + offs_m.to(tl.int64) * stride_xm
    w_rows = qweight_ptr + offs_n.to(tl.int64)[:, None] * words_per_row
    offs_w = tl.arange(0, BLOCK_K // 8)
    shifts = tl.arange(0, 8) * 4
    offs_g = tl.arange(0, TILE_GROUPS)
    num_groups = K // GROUP_SIZE

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    k_start = pid_k * k_per_split
    k_end = k_start + k_per_split
    if k_end > K:
        k_end = K
    # With PDL the previous kernel may still be running: x (its output) is read, and anything
    # is written, only after the wait; the first steps' weights stream into L2 before it.
    if USE_PDL:
        gdc_launch_dependents()
        _prefetch_steps(qweight_ptr, scales_ptr, zeros_ptr, offs_n, pid_n * BLOCK_N, k_start, k_end, N,
                        words_per_row, num_groups, BLOCK_N, BLOCK_K, GROUP_SIZE, HAS_ZEROS)
        gdc_wait()
    for k0 in range(k_start, k_end, BLOCK_K):
        # k0 is a multiple of BLOCK_K; words_per_row (K // 8) is an argument so that Triton sees
        # its divisibility and can use 16-byte loads.
        k0 = tl.multiple_of(k0, BLOCK_K)
        word = tl.multiple_of(k0 // 8, BLOCK_K // 8) + offs_w
        words = tl.load(
            w_rows + word[None, :], mask=mask_n[:, None] & (word < words_per_row)[None, :],
            other=0, eviction_policy="evict_first",
        )
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        # A tile spans TILE_GROUPS whole groups (or lies inside one): one scale per row per group.
        group = k0 // GROUP_SIZE + offs_g
        sz_offs = group.to(tl.int64)[None, :] * N + offs_n[:, None]
        sz_mask = mask_n[:, None] & (group < num_groups)[None, :]
        scale = tl.load(scales_ptr + sz_offs, mask=sz_mask, other=0.0)
        if HAS_ZEROS:
            zero = tl.load(zeros_ptr + sz_offs, mask=sz_mask, other=0.0)
        else:
            # A float32 constant, exact in any dtype: the interpreter cannot build bfloat16 ones.
            zero = tl.full((BLOCK_N, TILE_GROUPS), 8.0, dtype=tl.float32)
        # (q - zero) is a small exact integer, so one multiply in the scales' own dtype
        # rounds exactly like float32 math rounded once: dequantize natively when that is
        # the dot's dtype. `q * scale + min` would round twice natively: never DEQUANT_NATIVE.
        if BIASED_DOT:
            if BLOCK_K % 32 == 0:
                w_t = _mma_order_weights(words, x_ptr.dtype.element_ty == tl.bfloat16)
            else:
                w_t = tl.trans(_biased_weights(words, x_ptr.dtype.element_ty == tl.bfloat16))
        else:
            if DEQUANT_NATIVE:
                dq_dtype = scale.dtype
            else:
                dq_dtype = tl.float32
            q3 = (words[:, :, None] >> shifts[None, None, :]) & 0xF  # [BLOCK_N, BLOCK_K // 8, 8]
            qg = tl.reshape(q3, (BLOCK_N, TILE_GROUPS, BLOCK_K // TILE_GROUPS)).to(dq_dtype)
            if HAS_MINS:
                w = qg * scale.to(dq_dtype)[:, :, None] + zero.to(dq_dtype)[:, :, None]
            else:
                w = (qg - zero.to(dq_dtype)[:, :, None]) * scale.to(dq_dtype)[:, :, None]
            w = tl.reshape(w, (BLOCK_N, BLOCK_K))
        if HAS_PERM:
            cols = tl.load(perm_ptr + offs_k, mask=mask_k, other=0)
        else:
            cols = offs_k
        x = tl.load(
            x_rows[:, None] + cols[None, :], mask=mask_m[:, None] & mask_k[None, :],
            other=0.0, eviction_policy="evict_last",
        )
        if BIASED_DOT:
            # The tile lies in one group: `s * (sum x (16 + q) - (16 + z) sum x)`, scale and zero
            # applied once per output and tile. Products are exact, offsets small (16 vs 0..15).
            x_mma = _mma_order_x(x) if BLOCK_K % 32 == 0 else x
            if IEEE_FP32:
                dot = tl.dot(x_mma.to(tl.float32), w_t.to(tl.float32), input_precision="ieee")
            else:
                dot = tl.dot(x_mma, w_t)
            x_sum = tl.sum(x.to(tl.float32), axis=1)
            scale_f = tl.reshape(scale, (BLOCK_N,)).to(tl.float32)
            zero_f = tl.reshape(zero, (BLOCK_N,)).to(tl.float32) + 16.0
            acc += (dot - x_sum[:, None] * zero_f[None, :]) * scale_f[None, :]
        elif IEEE_FP32:
            # float32 operands (float32 activations, or bfloat16 ones under the interpreter,
            # which has no bfloat16 arithmetic), full-precision products.
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)

    result = acc
    out_mask = mask_m[:, None] & mask_n[None, :]
    out_offs = offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            result += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + out_offs, result.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # float32 partials [SPLIT_K, M, N]: summed by `_splitk_reduce_kernel`, or here with
        # FUSED_REDUCE by the program of this tile that arrives last (as in the GEMV: fixed
        # order, deterministic, one launch; its counter is reset for the next launch).
        part_rows = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(partial_ptr + pid_k * M * N + part_rows, result, mask=out_mask)
        if FUSED_REDUCE:
            # Every thread's partial is written before the (single-thread) release below.
            tl.debug_barrier()
            arrived = tl.atomic_add(lock_ptr + pid, 1, sem="acq_rel")
            if arrived == SPLIT_K - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                # A runtime bound, so the compiler does not unroll SPLIT_K loads.
                for s in range(0, SPLIT_K):
                    # .cg: the other programs' partials from L2, never a stale L1 line.
                    total += tl.load(partial_ptr + s * M * N + part_rows, mask=out_mask, other=0.0,
                                     cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
                tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
                tl.atomic_xchg(lock_ptr + pid, 0)


@triton.jit
def _splitk_reduce_kernel(
    partial_ptr, bias_ptr, out_ptr, M, N, stride_om,
    SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(partial_ptr + (s * M + row) * N + offs_n, mask=mask_n, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _int4_dequantize_kernel(
    qweight_ptr, scales_ptr, zeros_ptr, perm_ptr, out_ptr, N, K,
    GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_ZEROS: tl.constexpr, HAS_PERM: tl.constexpr, HAS_MINS: tl.constexpr,
):
    """`out[N, K]` = the dequantized weight in input-channel order; BLOCK_K <= GROUP_SIZE
    or one group per row, so a tile has one scale per row."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask = mask_n[:, None] & (offs_k < K)[None, :]
    word = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    words = tl.load(
        qweight_ptr + offs_n.to(tl.int64)[:, None] * (K // 8) + word[None, :],
        mask=mask_n[:, None] & (word < K // 8)[None, :], other=0,
    )
    shifts = tl.arange(0, 8) * 4
    q = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_N, BLOCK_K))
    scale, zero = _group_scale_zero(scales_ptr, zeros_ptr, k0 // GROUP_SIZE, N, offs_n, mask_n, HAS_ZEROS)
    if HAS_MINS:
        w = q.to(tl.float32) * scale[:, None] + zero[:, None]
    else:
        w = (q.to(tl.float32) - zero[:, None]) * scale[:, None]
    if HAS_PERM:
        cols = tl.load(perm_ptr + offs_k, mask=offs_k < K, other=0)
    else:
        cols = offs_k
    tl.store(out_ptr + offs_n.to(tl.int64)[:, None] * K + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)
