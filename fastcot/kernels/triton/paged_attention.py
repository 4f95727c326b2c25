"""Paged KV cache: the cache write, split-KV decode attention with its merge, and prefill attention.

Caches are NHD blocks `[num_blocks, block_size, num_kv_heads, head_dim]`; token t of a
sequence lives in block `block_table[t // block_size]` at offset `t % block_size`. Every
kernel gathers keys and values token by token through the block table, so any power-of-two
block size works, and all cache offsets are int64 (a long-context cache passes 2^31
elements). Softmax runs in base 2 in float32: `qk_scale` already holds
`scale * k_scale * log2(e)`, and `v_scale` multiplies the normalized output once.

The decode-path kernels (cache write, decode, merge) take USE_PDL: on sm_90 they are launched
with programmatic dependent launch (`fastcot.kernels.pdl`) and wait for the previous kernel
before their first global access, since any input (the cache included) may be its output.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _e4m3_code(x):
    """The float8 e4m3fn code (uint8) of float32 `x`: round to nearest even, saturate at +-448
    (infinities included), NaN stays NaN, and the sign is kept (-0 stays -0). Built from the
    bits with integer arithmetic, so it is the same on a GPU and under the interpreter (whose
    own float8 conversion mis-rounds), and equals torch's `x.clamp(-448, 448).to(float8_e4m3fn)`."""
    x_bits = x.to(tl.uint32, bitcast=True)
    sign = (x_bits >> 24) & 0x80
    a = x_bits & 0x7FFFFFFF
    # Normal range (|x| >= 2^-6): drop 20 mantissa bits, ties to even, rebias 127 -> 7.
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # Subnormal range: adding 2^14 leaves |x| rounded (to nearest even) to a multiple of the
    # subnormal step 2^-9 in the low bits.
    subnormal = (tl.abs(x) + 16384.0).to(tl.uint32, bitcast=True) - 0x46800000
    code = tl.where(a < 0x3C800000, subnormal, normal)
    code = tl.where(a >= 0x43E00000, 0x7E, code)  # |x| >= 448, inf included: 448
    code = tl.where(a > 0x7F800000, 0x7F, code)  # NaN
    return (code | sign).to(tl.uint8)


@triton.jit
def _write_kv_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_key_t, stride_value_t, row_size, k_scale, v_scale,
    BLOCK: tl.constexpr, FP8: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """One program per (token, chunk of its Hkv * D values); a slot of -1 writes nothing. A
    float8 cache stores `value / scale` (a correctly rounded division, not a product with the
    reciprocal, which is one float32 step off near rounding midpoints)."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    if slot >= 0:
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < row_size
        k = tl.load(key_ptr + t * stride_key_t + offs, mask=mask, other=0.0)
        v = tl.load(value_ptr + t * stride_value_t + offs, mask=mask, other=0.0)
        if FP8:
            k = _e4m3_code(tl.div_rn(k.to(tl.float32), k_scale)).to(tl.float8e4nv, bitcast=True)
            v = _e4m3_code(tl.div_rn(v.to(tl.float32), v_scale)).to(tl.float8e4nv, bitcast=True)
        tl.store(k_cache_ptr + slot * row_size + offs, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + slot * row_size + offs, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_kv_tile(cache_ptr, table_row_ptr, offs_t, mask_t, kv_head, offs_d, mask_d,
                  stride_block, stride_slot, stride_head, BLOCK_SIZE: tl.constexpr):
    """Cached tokens `offs_t` of one sequence and KV head, `[BLOCK_N, BLOCK_D]`."""
    block = tl.load(table_row_ptr + offs_t // BLOCK_SIZE, mask=mask_t, other=0).to(tl.int64)
    token_offs = block * stride_block + (offs_t % BLOCK_SIZE) * stride_slot + kv_head * stride_head
    return tl.load(cache_ptr + token_offs[:, None] + offs_d[None, :], mask=mask_t[:, None] & mask_d[None, :], other=0)


@triton.jit
def _e4m3_scaled(code, BF16: tl.constexpr):
    """float8 e4m3fn codes (uint8) as float16 holding value * 2^-8, or with BF16 as bfloat16
    holding value * 2^-120: the sign moves to bit 15 and exponent and mantissa shift into the
    16-bit format unchanged, so every finite code (subnormals and -0 included) is exact and
    costs a few integer operations, no float8 instruction (which sm_80 lacks). Callers fold
    the 2^8 / 2^120 into their scales. NaN codes (0x7F, 0xFF) stay NaN."""
    x = code.to(tl.uint16)
    mag = x & 0x7F
    bits = (mag << (4 if BF16 else 7)) | ((x & 0x80) << 8)
    bits = tl.where(mag == 0x7F, 0x7FC0 if BF16 else 0x7E00, bits)
    return bits.to(tl.bfloat16 if BF16 else tl.float16, bitcast=True)


@triton.jit
def _e4m3_pairs(w):
    """The float16 codes (as `_e4m3_scaled` makes them) of bytes (0, 2) and (1, 3) of the uint32
    words `w`, two per word, so that a 32-bit operation handles two values; 9 operations a word.
    Adding 1 to each byte's 7-bit magnitude sets that byte's bit 7 only for the NaN magnitude
    0x7F (no carry leaves a byte), so `mag` holds per byte the magnitude with a NaN flag in
    place of the sign; shifted into a float16 half (<< 7 for bytes 0 and 2, >> 1 for bytes 1
    and 3) the flag lands on the top exponent bit (0x3F80 -> 0x7F80, a NaN). One bitwise select
    per pair then takes bits 0x7F807F80 from the shifted magnitudes and the two sign bits from
    the word's signs, which lie outside that mask (the other bytes' signs fall inside it)."""
    mag = w & 0x7F7F7F7F
    mag = mag | ((mag + 0x01010101) & 0x80808080)
    sign = w & 0x80808080
    even = ((mag << 7) & 0x7F807F80) | ((sign << 8) & 0x807F807F)
    odd = ((mag >> 1) & 0x7F807F80) | (sign & 0x807F807F)
    return even, odd


@triton.jit
def _word_halves(w):
    """uint32 words holding two float16 values each, `[N, W]`, as float16 `[N, 2 * W]` (low half
    first): each word's pair stays in one register, so a dot takes it with no repacking."""
    halves = tl.join(w & 0xFFFF, w >> 16).to(tl.uint16)
    return tl.reshape(halves, (w.shape[0], 2 * w.shape[1])).to(tl.float16, bitcast=True)


@triton.jit
def _fp8_word_pairs(w):
    """int32 words of four float8 codes `[N, W]` as two float16 tiles `[N, 2 * W]` holding
    value * 2^-8 (`_e4m3_pairs`, 9 integer operations a word, no float8 instruction): `a` with
    codes 0 and 2 of each word, `b` with codes 1 and 3 (head dims `_fp8_pair_dims`)."""
    even, odd = _e4m3_pairs(w.to(tl.uint32, bitcast=True))
    return _word_halves(even), _word_halves(odd)


@triton.jit
def _fp8_code_pairs(x, CVT: tl.constexpr):
    """int16 elements of two float8 codes `[N, P]` as two float16 tiles `[N, P]`: `a` from the
    low byte (even head dims), `b` from the high byte (odd head dims). With CVT, sm_89+'s
    `cvt.rn.f16x2.e4m3x2` on two elements (one 32-bit word) at a time: a byte permute puts
    the two low bytes side by side, then one instruction per pair gives the values themselves,
    exact for every code (float16 holds all of e4m3, NaN stays NaN, -0 stays -0). Without CVT
    (inline PTX does not run under the interpreter), `_e4m3_scaled` byte by byte: value * 2^-8."""
    if CVT:
        a, b = tl.inline_asm_elementwise(
            "{ .reg .b32 t; .reg .b16 l, h; prmt.b32 t, $2, 0, 0x3120; mov.b32 {l, h}, t;"
            " cvt.rn.f16x2.e4m3x2 $0, l; cvt.rn.f16x2.e4m3x2 $1, h; }",
            "=r,=r,r", [x], dtype=(tl.float16, tl.float16), is_pure=True, pack=2)
    else:
        u = x.to(tl.uint16, bitcast=True)
        a = _e4m3_scaled((u & 0xFF).to(tl.uint8), False)
        b = _e4m3_scaled((u >> 8).to(tl.uint8), False)
    return a, b


@triton.jit
def _fp8_pair_dims(offs_p, PAIRS: tl.constexpr):
    """Head dims at position p of the `a` tile (add 1 for the `b` tile) of `_fp8_code_pairs`
    (PAIRS: 2p) or of `_fp8_word_pairs` (word p // 2, code 2 * (p % 2))."""
    if PAIRS:
        dims = offs_p * 2
    else:
        dims = (offs_p // 2) * 4 + (offs_p % 2) * 2
    return dims


@triton.jit
def _prescale_q(q, ON: tl.constexpr):
    """With bfloat16 keys from `_e4m3_scaled` (value * 2^-120), q * 2^56 keeps q.k products in
    float32's normal range; the launcher folds the remaining 2^64 into qk_scale."""
    if ON:
        q = (q.to(tl.float32) * 72057594037927936.0).to(q.dtype)  # 2^56, exact
    return q


@triton.jit
def _query_as_f16(q_a, q_b, qk_scale):
    """A bfloat16 query tile, in two parts `q_a` and `q_b` (head dims split between them), as
    float16 for dots with float16 keys (float8 caches): scaled by the power of two 2^s that puts
    its largest magnitude in [2^14, 2^15), so no element overflows and every one at least 2^-29
    of the largest keeps all of bfloat16's bits; `qk_scale / 2^s` undoes it in the softmax. An
    all-zero tile gets 2^127; NaN and infinity stay as they are."""
    q_a = q_a.to(tl.float32)
    q_b = q_b.to(tl.float32)
    top = tl.maximum(tl.max(tl.max(tl.abs(q_a), axis=1), axis=0), tl.max(tl.max(tl.abs(q_b), axis=1), axis=0))
    exponent = (top.to(tl.int32, bitcast=True) >> 23) & 0xFF  # 127 + floor(log2(top))
    pow2 = (tl.minimum(268 - exponent, 254) << 23).to(tl.float32, bitcast=True)  # 2^(141 - exponent)
    return (q_a * pow2).to(tl.float16), (q_b * pow2).to(tl.float16), qk_scale / pow2


@triton.jit
def _softmax_shift(s, m):
    """The online-softmax update for scores `s` (masked keys at -inf) after running maxima `m`:
    (the new maxima, the factor rescaling what was summed so far, the tile's exponentials).
    Rows that have seen no visible key keep m = -inf; they are shifted by 0 instead, so no
    `-inf - -inf` ever reaches exp2."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, tl.exp2(m - shift), tl.exp2(s - shift[:, None])


@triton.jit
def _attention_step(q, k, v, m, l, acc, visible, qk_scale, IEEE_FP32: tl.constexpr):
    """One online-softmax step over a key tile; returns the updated (m, l, acc). With
    IEEE_FP32 the dots run on float32 operands (q is float32 then): float32 queries, and
    bfloat16 ones under the interpreter, which has no bfloat16 arithmetic. The update itself is
    `_softmax_shift`'s."""
    k = k.to(q.dtype)  # a no-op but on float32 dots: the caller gives K in q's dtype
    if IEEE_FP32:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    m_new, alpha, p = _softmax_shift(tl.where(visible, s * qk_scale, float("-inf")), m)
    l = l * alpha + tl.sum(p, axis=1)
    if IEEE_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l, acc


@triton.jit
def _attention_step_pairs(q_a, q_b, k_a, k_b, v_a, v_b, m, l, acc_a, acc_b, visible, qk_scale,
                          IEEE_FP32: tl.constexpr, POS_SCALE: tl.constexpr):
    """`_attention_step` with the head dims in two parts (a and b): scores from two dots, the
    output in two accumulators. Used by the float8 paths, whose K and V tiles come as two parts
    so that each thread's pair of float16 values stays in one register. With POS_SCALE
    (qk_scale > 0, so scaling keeps the maximum's place) `m` is kept in unscaled score units
    and each exponent is one multiply-add, `s * qk_scale - shift`; the caller scales `m`
    after the loop."""
    if IEEE_FP32:
        s = tl.dot(q_a, tl.trans(k_a.to(tl.float32)), input_precision="ieee")
        s = tl.dot(q_b, tl.trans(k_b.to(tl.float32)), s, input_precision="ieee")
    else:
        s = tl.dot(q_b, tl.trans(k_b), tl.dot(q_a, tl.trans(k_a)))
    if POS_SCALE:
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new * qk_scale)
        alpha = tl.exp2(m * qk_scale - shift)
        p = tl.exp2(s * qk_scale - shift[:, None])
    else:
        m_new, alpha, p = _softmax_shift(tl.where(visible, s * qk_scale, float("-inf")), m)
    l = l * alpha + tl.sum(p, axis=1)
    if IEEE_FP32:
        acc_a = acc_a * alpha[:, None] + tl.dot(p, v_a.to(tl.float32), input_precision="ieee")
        acc_b = acc_b * alpha[:, None] + tl.dot(p, v_b.to(tl.float32), input_precision="ieee")
    else:
        p = p.to(tl.float16)
        acc_a = acc_a * alpha[:, None] + tl.dot(p, v_a)
        acc_b = acc_b * alpha[:, None] + tl.dot(p, v_b)
    return m_new, l, acc_a, acc_b


@triton.jit
def _token_rows(table_row_ptr, offs_t, mask_t, kv_head, stride_block, stride_slot, stride_head,
                BLOCK_SIZE: tl.constexpr):
    """Cache offsets (int64, in elements of the cache view) of tokens `offs_t` of one sequence
    and KV head: one block-table read per token, shared by the K and V loads."""
    offs_t = offs_t.to(tl.uint32)  # non-negative: shifts and masks, no signed division
    block = tl.load(table_row_ptr + offs_t // BLOCK_SIZE, mask=mask_t, other=0).to(tl.uint32)
    return block.to(tl.int64) * stride_block + ((offs_t % BLOCK_SIZE) * stride_slot + kv_head * stride_head)


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    stride_q_b, stride_q_h, stride_out_b, stride_out_h, stride_table_b,
    stride_block, stride_slot, stride_head,
    qk_scale, v_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE_FP32: tl.constexpr,
    KV_FP8: tl.constexpr, Q_TO_F16: tl.constexpr, FP8_WORDS: tl.constexpr, FP8_PAIRS: tl.constexpr,
    FP8_CVT: tl.constexpr, POS_SCALE: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """Program (sequence, KV head, split): the whole GQA group of query heads against one
    contiguous slice of the sequence, so each KV tile is read once for the group. The split
    ranges are computed here from seq_lens, so the grid depends only on shapes (CUDA-graph safe).

    The pipeline: each iteration reads the block-table entries of the next tile (one read per
    token, shared by K and V), so a tile's K and V addresses come from registers loaded an
    iteration earlier and no KV load waits on a table load. With that, Triton's pipeliner
    (num_stages 3) double-buffers the K and V copies (`cp.async`): tile i + 1 is in flight
    while tile i is computed. Loads past the split's end are masked (predicated), not branched.
    (With the table read in the same iteration the pipeliner gives the table a stage of its own
    and keeps a single K/V buffer: a copy waited on right after it is issued.)"""
    if USE_PDL:  # q (rotary), the cache (its write) and the tables may all be just written
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + offs_g
    mask_g = offs_g < GROUP
    q_rows = q_ptr + b * stride_q_b + heads[:, None] * stride_q_h
    m = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    table_row = block_tables_ptr + b * stride_table_b
    offs_n = tl.arange(0, BLOCK_N)
    # The block-table entries of tile i + 1 are read during tile i.
    rows = _token_rows(table_row, start + offs_n, start + offs_n < end, kv_head, stride_block, stride_slot,
                       stride_head, BLOCK_SIZE)
    if FP8_WORDS or FP8_PAIRS:
        # The tiles are read as int32 words of four codes (FP8_WORDS) or int16 elements of two
        # (FP8_PAIRS) and become two float16 tiles, a and b, that split the head dims between
        # them (`_fp8_word_pairs`, `_fp8_code_pairs`); q and the output follow that split. Two
        # tiles rather than one joined tile keep each thread's float16 pairs in whole registers
        # and the dots' operands in the plain 16-bit layout.
        if FP8_PAIRS:
            offs_c = tl.arange(0, BLOCK_D // 2)
            mask_c = offs_c < HEAD_DIM // 2
        else:
            offs_c = tl.arange(0, BLOCK_D // 4)
            mask_c = offs_c < HEAD_DIM // 4
        dims_a = _fp8_pair_dims(tl.arange(0, BLOCK_D // 2), FP8_PAIRS)
        dims_b = dims_a + 1
        mask_a = mask_g[:, None] & (dims_a < HEAD_DIM)[None, :]
        mask_b = mask_g[:, None] & (dims_b < HEAD_DIM)[None, :]
        q_a = tl.load(q_rows + dims_a[None, :], mask=mask_a, other=0.0)
        q_b = tl.load(q_rows + dims_b[None, :], mask=mask_b, other=0.0)
        if IEEE_FP32:
            q_a, q_b = q_a.to(tl.float32), q_b.to(tl.float32)
        if Q_TO_F16:
            q_a, q_b, qk_scale = _query_as_f16(q_a, q_b, qk_scale)
        acc_a = tl.zeros((GROUP_PAD, BLOCK_D // 2), dtype=tl.float32)
        acc_b = tl.zeros((GROUP_PAD, BLOCK_D // 2), dtype=tl.float32)
        for t0 in range(start, end, BLOCK_N):
            mask_t = t0 + offs_n < end
            mask_kv = mask_t[:, None] & mask_c[None, :]
            k_raw = tl.load(k_cache_ptr + rows[:, None] + offs_c[None, :], mask=mask_kv, other=0)
            v_raw = tl.load(v_cache_ptr + rows[:, None] + offs_c[None, :], mask=mask_kv, other=0)
            offs_t = t0 + BLOCK_N + offs_n
            rows = _token_rows(table_row, offs_t, offs_t < end, kv_head, stride_block, stride_slot, stride_head,
                               BLOCK_SIZE)
            if FP8_PAIRS:
                k_a, k_b = _fp8_code_pairs(k_raw, FP8_CVT)
                v_a, v_b = _fp8_code_pairs(v_raw, FP8_CVT)
            else:
                k_a, k_b = _fp8_word_pairs(k_raw)
                v_a, v_b = _fp8_word_pairs(v_raw)
            m, l, acc_a, acc_b = _attention_step_pairs(q_a, q_b, k_a, k_b, v_a, v_b, m, l, acc_a, acc_b,
                                                       mask_t[None, :], qk_scale, IEEE_FP32, POS_SCALE)
        if POS_SCALE:
            m = m * qk_scale  # in log2 units for the log-sum-exp
        _store_decode_out(acc_a, dims_a, mask_a, m, l, v_scale, b, heads, mask_g, split, out_ptr, part_out_ptr,
                          part_lse_ptr, stride_out_b, stride_out_h, GROUP, BLOCK_D, NUM_SPLITS, True)
        _store_decode_out(acc_b, dims_b, mask_b, m, l, v_scale, b, heads, mask_g, split, out_ptr, part_out_ptr,
                          part_lse_ptr, stride_out_b, stride_out_h, GROUP, BLOCK_D, NUM_SPLITS, False)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        mask_q = mask_g[:, None] & mask_d[None, :]
        q = tl.load(q_rows + offs_d[None, :], mask=mask_q, other=0.0)
        if IEEE_FP32:
            q = q.to(tl.float32)  # then K and V follow q's dtype in _attention_step
        acc = tl.zeros((GROUP_PAD, BLOCK_D), dtype=tl.float32)
        for t0 in range(start, end, BLOCK_N):
            mask_t = t0 + offs_n < end
            mask_kv = mask_t[:, None] & mask_d[None, :]
            k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_kv, other=0)
            v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=mask_kv, other=0)
            offs_t = t0 + BLOCK_N + offs_n
            rows = _token_rows(table_row, offs_t, offs_t < end, kv_head, stride_block, stride_slot, stride_head,
                               BLOCK_SIZE)
            if KV_FP8:  # codes byte by byte (head sizes not divisible by 4)
                k, v = _e4m3_scaled(k, False), _e4m3_scaled(v, False)
            m, l, acc = _attention_step(q, k, v, m, l, acc, mask_t[None, :], qk_scale, IEEE_FP32)
        _store_decode_out(acc, offs_d, mask_q, m, l, v_scale, b, heads, mask_g, split, out_ptr, part_out_ptr,
                          part_lse_ptr, stride_out_b, stride_out_h, GROUP, BLOCK_D, NUM_SPLITS, True)


@triton.jit
def _store_decode_out(acc, offs_d, mask, m, l, v_scale, b, heads, mask_g, split, out_ptr, part_out_ptr,
                      part_lse_ptr, stride_out_b, stride_out_h, GROUP: tl.constexpr, BLOCK_D: tl.constexpr,
                      NUM_SPLITS: tl.constexpr, STORE_LSE: tl.constexpr):
    """Head dims `offs_d` of a decode program's output (unsplit), or of its partial output and,
    with STORE_LSE, its log2-sum-exp2 (split)."""
    # An empty sequence or split has l == 0 and acc == 0: its output is 0, never 0/0.
    o = acc / tl.where(l > 0, l, 1.0)[:, None] * v_scale
    if NUM_SPLITS == 1:
        tl.store(out_ptr + b * stride_out_b + heads[:, None] * stride_out_h + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # Partials [B, Hq, NUM_SPLITS, BLOCK_D] and log2-sum-exp2 [B, Hq, NUM_SPLITS], float32.
        row = (b * (tl.num_programs(1) * GROUP) + heads) * NUM_SPLITS + split
        if STORE_LSE:
            lse = tl.where(l > 0, m + tl.log2(tl.where(l > 0, l, 1.0)), float("-inf"))
            tl.store(part_lse_ptr + row, lse, mask=mask_g)
        tl.store(part_out_ptr + row[:, None] * BLOCK_D + offs_d[None, :], o, mask=mask)


@triton.jit
def _decode_merge_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, stride_out_b, stride_out_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """out[b, h] = the splits' partial outputs weighted by their share of the softmax mass."""
    if USE_PDL:  # the partials are the decode kernel's output
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    row0 = (b * tl.num_programs(1) + h) * NUM_SPLITS
    offs_s = tl.arange(0, SPLITS_PAD)
    mask_s = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(part_lse_ptr + row0 + offs_s, mask=mask_s, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    # The decode kernel writes HEAD_DIM of each BLOCK_D-wide partial row: the padding is never read.
    parts = tl.load(part_out_ptr + (row0 + offs_s)[:, None] * BLOCK_D + offs_d[None, :],
                    mask=mask_s[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    total = tl.sum(weight, axis=0)
    o = tl.sum(parts * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_out_b + h * stride_out_h + offs_d, o.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, out_ptr,
    stride_q_t, stride_q_h, stride_out_t, stride_out_h, stride_table_b,
    stride_block, stride_slot, stride_head,
    qk_scale, v_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE_FP32: tl.constexpr, KV_FP8: tl.constexpr, K_BF16: tl.constexpr,
):
    """Program (query tile, sequence, query head): the sequence's new tokens are the last
    q_len of its seq_len cached positions; tiles past q_len exit at once."""
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + b)
    q_len = tl.load(cu_seqlens_q_ptr + b + 1) - q_start
    if tile * BLOCK_M < q_len:
        seq_len = tl.load(seq_lens_ptr + b)
        context = seq_len - q_len
        kv_head = head // GROUP
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < q_len
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        tokens = (q_start + offs_m).to(tl.int64)
        q = tl.load(q_ptr + tokens[:, None] * stride_q_t + head * stride_q_h + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if IEEE_FP32:
            q = q.to(tl.float32)
        q = _prescale_q(q, KV_FP8 and K_BF16)
        q_pos = context + offs_m

        m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        table_row = block_tables_ptr + b * stride_table_b
        kv_end = seq_len
        if CAUSAL:
            kv_end = tl.minimum(seq_len, context + (tile + 1) * BLOCK_M)
        for t0 in range(0, kv_end, BLOCK_N):
            offs_t = t0 + tl.arange(0, BLOCK_N)
            mask_t = offs_t < kv_end
            k = _load_kv_tile(k_cache_ptr, table_row, offs_t, mask_t, kv_head, offs_d, mask_d,
                              stride_block, stride_slot, stride_head, BLOCK_SIZE)
            v = _load_kv_tile(v_cache_ptr, table_row, offs_t, mask_t, kv_head, offs_d, mask_d,
                              stride_block, stride_slot, stride_head, BLOCK_SIZE)
            if KV_FP8:
                k, v = _e4m3_scaled(k, K_BF16), _e4m3_scaled(v, False)
            visible = mask_t[None, :]
            if CAUSAL:
                visible = visible & (offs_t[None, :] <= q_pos[:, None])
            m, l, acc = _attention_step(q, k, v, m, l, acc, visible, qk_scale, IEEE_FP32)

        o = acc / tl.where(l > 0, l, 1.0)[:, None] * v_scale
        tl.store(out_ptr + tokens[:, None] * stride_out_t + head * stride_out_h + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
