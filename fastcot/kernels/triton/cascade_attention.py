"""Shared-prefix (cascade) decode attention: the prefix pass, the suffix pass and their merge.

Rows of a decode batch that share their leading KV blocks form groups. The prefix pass reads
a group's shared keys and values once for all its rows: every row and query head of the group
that maps to one KV head is a row of the `tl.dot` query tile. The suffix pass is plain
split-KV decode over each row's own positions `[shared_len, seq_len)`. Both write float32
partial outputs with their log2-sum-exp2; the merge weights them by their softmax mass
(FlashInfer's cascade attention). Caches are NHD `[num_blocks, block_size, Hkv, D]` with
int64 offsets; `qk_scale` holds `scale * k_scale * log2(e)` and `v_scale` multiplies the
normalized partial output once.

Partials are `[B, Hq, NUM_SLOTS, BLOCK_D]` (log2-sum-exp2 `[B, Hq, NUM_SLOTS]`): slots
`[0, PREFIX_SPLITS)` belong to the prefix pass, the rest to the suffix pass. A row in no group
has its prefix slots unwritten; the merge skips them by its `row_groups` entry (-1).

With USE_PDL (sm_90, `fastcot.kernels.pdl`) each kernel is launched with programmatic dependent
launch and waits for the previous kernel before its first global access (q, the cache and the
partials may all be its output).
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastcot.kernels.pdl import gdc_launch_dependents, gdc_wait
from fastcot.kernels.triton.paged_attention import _attention_step  # one base-2 online-softmax step


@triton.jit
def _e4m3_as_16bit(code, BF16: tl.constexpr):
    """float8 e4m3fn codes (uint8) as float16 holding value * 2^-8 (bfloat16: value * 2^-120):
    sign to bit 15, exponent and mantissa shifted unchanged into the 16-bit format, so every
    finite code is exact and no float8 instruction (absent on sm_80) is used; NaN codes stay
    NaN. The launcher folds 2^8 (2^64 with the q pre-scale below) into its scales."""
    x = code.to(tl.uint16)
    mag = x & 0x7F
    bits = (mag << (4 if BF16 else 7)) | ((x & 0x80) << 8)
    bits = tl.where(mag == 0x7F, 0x7FC0 if BF16 else 0x7E00, bits)
    return bits.to(tl.bfloat16 if BF16 else tl.float16, bitcast=True)


@triton.jit
def _gather_tile(cache_ptr, table_row_ptr, offs_t, mask_t, kv_head, offs_d, mask_d,
                 stride_block, stride_slot, stride_head, BLOCK_SIZE: tl.constexpr,
                 KV_FP8: tl.constexpr, BF16: tl.constexpr):
    """Tokens `offs_t` of one block table and KV head, `[BLOCK_N, BLOCK_D]` (16-bit)."""
    block = tl.load(table_row_ptr + offs_t // BLOCK_SIZE, mask=mask_t, other=0).to(tl.int64)
    token_offs = block * stride_block + (offs_t % BLOCK_SIZE) * stride_slot + kv_head * stride_head
    x = tl.load(cache_ptr + token_offs[:, None] + offs_d[None, :], mask=mask_t[:, None] & mask_d[None, :], other=0)
    if KV_FP8:
        x = _e4m3_as_16bit(x, BF16)
    return x


@triton.jit
def _attend_range(q, cache_k_ptr, cache_v_ptr, table_row, start, end, kv_head, offs_d, mask_d,
                  stride_block, stride_slot, stride_head, qk_scale,
                  M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  IEEE_FP32: tl.constexpr, KV_FP8: tl.constexpr, K_BF16: tl.constexpr):
    """Query tile `q [M, BLOCK_D]` against positions `[start, end)` of one block table:
    (m, l, acc) of the online softmax."""
    m = tl.full((M,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((M,), dtype=tl.float32)
    acc = tl.zeros((M, BLOCK_D), dtype=tl.float32)
    for t0 in range(start, end, BLOCK_N):
        offs_t = t0 + tl.arange(0, BLOCK_N)
        mask_t = offs_t < end
        k = _gather_tile(cache_k_ptr, table_row, offs_t, mask_t, kv_head, offs_d, mask_d,
                         stride_block, stride_slot, stride_head, BLOCK_SIZE, KV_FP8, K_BF16)
        v = _gather_tile(cache_v_ptr, table_row, offs_t, mask_t, kv_head, offs_d, mask_d,
                         stride_block, stride_slot, stride_head, BLOCK_SIZE, KV_FP8, False)
        m, l, acc = _attention_step(q, k, v, m, l, acc, mask_t[None, :], qk_scale, IEEE_FP32)
    return m, l, acc


@triton.jit
def _store_partial(part_out_ptr, part_lse_ptr, rows, heads, slot, m, l, acc, valid, offs_d, mask_d, v_scale,
                   NUM_HEADS: tl.constexpr, NUM_SLOTS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Normalized partial output and its log2-sum-exp2 (-inf when nothing was seen)."""
    o = acc / tl.where(l > 0, l, 1.0)[:, None] * v_scale
    lse = tl.where(l > 0, m + tl.log2(tl.where(l > 0, l, 1.0)), float("-inf"))
    index = (rows * NUM_HEADS + heads) * NUM_SLOTS + slot
    tl.store(part_lse_ptr + index, lse, mask=valid)
    # An empty slice writes only its -inf: the merge never reads its output.
    seen = valid & (l > 0)
    tl.store(part_out_ptr + index[:, None] * BLOCK_D + offs_d[None, :], o, mask=seen[:, None] & mask_d[None, :])


@triton.jit
def _split_range(start, end, split, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split `split`'s slice of `[start, end)`, whole BLOCK_N steps except the last."""
    per_split = tl.cdiv(tl.cdiv(end - start, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = start + split * per_split
    return lo, tl.minimum(lo + per_split, end)


@triton.jit
def _cascade_prefix_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, group_rows_ptr, shared_lens_ptr, shared_tables_ptr,
    part_out_ptr, part_lse_ptr,
    stride_q_b, stride_q_h, stride_group_rows, stride_shared_table,
    stride_block, stride_slot, stride_head,
    qk_scale, v_scale,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, MAX_ROWS: tl.constexpr,
    ROWS: tl.constexpr, M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, PREFIX_SPLITS: tl.constexpr, NUM_SLOTS: tl.constexpr,
    IEEE_FP32: tl.constexpr, KV_FP8: tl.constexpr, K_BF16: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """Program (group x chunk of ROWS rows, KV head, split): the chunk's rows times the GQA
    group's query heads (tile row i * GROUP + j: row slot i, head j) against the group's
    shared positions `[0, shared_len)`, read once for all of them. Padding rows (-1) are
    masked; a group of length 0 writes -inf for its rows."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    chunks: tl.constexpr = (MAX_ROWS + ROWS - 1) // ROWS
    pid = tl.program_id(0)
    g = (pid // chunks).to(tl.int64)
    chunk = pid % chunks
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    offs_m = tl.arange(0, M)
    slot_in_group = chunk * ROWS + offs_m // GROUP
    in_tile = (offs_m < ROWS * GROUP) & (slot_in_group < MAX_ROWS)
    rows = tl.load(group_rows_ptr + g * stride_group_rows + slot_in_group, mask=in_tile, other=-1)
    valid = rows >= 0
    rows = tl.where(valid, rows, 0).to(tl.int64)
    heads = kv_head * GROUP + offs_m % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    if tl.max(valid.to(tl.int32), axis=0) > 0:
        q = tl.load(q_ptr + rows[:, None] * stride_q_b + heads[:, None] * stride_q_h + offs_d[None, :],
                    mask=valid[:, None] & mask_d[None, :], other=0.0)
        if IEEE_FP32:
            q = q.to(tl.float32)
        if KV_FP8 and K_BF16:
            q = (q.to(tl.float32) * 72057594037927936.0).to(q.dtype)  # 2^56: q.k stays in float32's normal range
        shared_len = tl.load(shared_lens_ptr + g)
        start, end = _split_range(0, shared_len, split, PREFIX_SPLITS, BLOCK_N)
        m, l, acc = _attend_range(q, k_cache_ptr, v_cache_ptr, shared_tables_ptr + g * stride_shared_table,
                                  start, end, kv_head, offs_d, mask_d, stride_block, stride_slot, stride_head,
                                  qk_scale, M, BLOCK_D, BLOCK_N, BLOCK_SIZE, IEEE_FP32, KV_FP8, K_BF16)
        _store_partial(part_out_ptr, part_lse_ptr, rows, heads, split, m, l, acc, valid, offs_d, mask_d, v_scale,
                       NUM_HEADS, NUM_SLOTS, BLOCK_D)


@triton.jit
def _cascade_suffix_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, row_groups_ptr, shared_lens_ptr,
    part_out_ptr, part_lse_ptr,
    stride_q_b, stride_q_h, stride_table_b,
    stride_block, stride_slot, stride_head,
    qk_scale, v_scale,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    PREFIX_SPLITS: tl.constexpr, SUFFIX_SPLITS: tl.constexpr, NUM_SLOTS: tl.constexpr,
    IEEE_FP32: tl.constexpr, KV_FP8: tl.constexpr, K_BF16: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """Program (row, KV head, split): the row's GQA group of query heads against its own
    positions `[shared_len, seq_len)` through its block table (shared_len 0 for a row in no
    group), split on the device so the grid depends only on shapes."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    group = tl.load(row_groups_ptr + b)
    shared_len = tl.load(shared_lens_ptr + tl.maximum(group, 0).to(tl.int64), mask=group >= 0, other=0)
    start, end = _split_range(tl.minimum(shared_len, seq_len), seq_len, split, SUFFIX_SPLITS, BLOCK_N)

    offs_m = tl.arange(0, M)
    valid = offs_m < GROUP
    heads = kv_head * GROUP + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_q_b + heads[:, None] * stride_q_h + offs_d[None, :],
                mask=valid[:, None] & mask_d[None, :], other=0.0)
    if IEEE_FP32:
        q = q.to(tl.float32)
    if KV_FP8 and K_BF16:
        q = (q.to(tl.float32) * 72057594037927936.0).to(q.dtype)  # 2^56, as in the prefix pass
    m, l, acc = _attend_range(q, k_cache_ptr, v_cache_ptr, block_tables_ptr + b * stride_table_b,
                              start, end, kv_head, offs_d, mask_d, stride_block, stride_slot, stride_head,
                              qk_scale, M, BLOCK_D, BLOCK_N, BLOCK_SIZE, IEEE_FP32, KV_FP8, K_BF16)
    rows = tl.zeros((M,), dtype=tl.int64) + b
    _store_partial(part_out_ptr, part_lse_ptr, rows, heads, PREFIX_SPLITS + split, m, l, acc, valid, offs_d,
                   mask_d, v_scale, NUM_HEADS, NUM_SLOTS, BLOCK_D)


@triton.jit
def _cascade_merge_kernel(
    part_out_ptr, part_lse_ptr, row_groups_ptr, out_ptr, stride_out_b, stride_out_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PREFIX_SPLITS: tl.constexpr, NUM_SLOTS: tl.constexpr,
    SLOTS_PAD: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """out[b, h] = the partials weighted by their share of the softmax mass; a row in no group
    skips the prefix slots, which nothing wrote. Nothing seen at all gives zeros."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    row0 = (b * tl.num_programs(1) + h) * NUM_SLOTS
    grouped = tl.load(row_groups_ptr + b) >= 0
    offs_s = tl.arange(0, SLOTS_PAD)
    mask_s = (offs_s < NUM_SLOTS) & ((offs_s >= PREFIX_SPLITS) | grouped)
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(part_lse_ptr + row0 + offs_s, mask=mask_s, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    # Slots that saw nothing (-inf) are neither weighted nor read: their outputs were not written.
    seen = mask_s & (lse > float("-inf"))
    weight = tl.where(seen, weight, 0.0)
    parts = tl.load(part_out_ptr + (row0 + offs_s)[:, None] * BLOCK_D + offs_d[None, :],
                    mask=seen[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)  # the padding: never written
    total = tl.sum(weight, axis=0)
    o = tl.sum(parts * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_out_b + h * stride_out_h + offs_d, o.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)
