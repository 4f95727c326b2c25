"""`fastcot.ops.cascade_decode_attention`: decode attention for rows that share leading KV blocks.

The rows of a group (the `n` samples of one request, self-consistency votes, requests that
hit the same cached prefix) read the group's shared keys and values once for all of them,
then each row reads its own suffix; the two partial results are merged by log-sum-exp
(FlashInfer's cascade attention). See docs/paged_attention.md, "Shared-prefix decode".
"""

from __future__ import annotations

import itertools
import math

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_buffer, dense_input, unit_stride_rows
from fastcot.ops._int4_configs import num_sms
from fastcot.ops._paged_checks import (
    FP8,
    check_block_tables,
    check_cache_pair,
    check_heads,
    check_query_dtype,
    check_scales,
    check_tensor,
    index_checks_enabled,
)

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 256
MAX_TILE_ROWS = 64  # rows x query heads of one prefix tile (the M of its dots)
PROGRAMS_PER_SM = 4  # untuned: the split counts aim at this many programs per SM


def cascade_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, group_rows, shared_lens,
                             shared_block_tables, row_groups, *, scale=None, k_scale=1.0, v_scale=1.0, out=None):
    """Decode attention where groups of rows share their first positions.

    Row b attends to positions `[0, seq_lens[b])`, as in `paged_decode_attention`. If b is in
    group g (`row_groups[b] == g >= 0`), its first `shared_lens[g]` positions are read through
    `shared_block_tables[g]` (once for all of g's rows) and the rest through `block_tables[b]`;
    a row in no group (-1) reads everything through its own table. The result equals
    `paged_decode_attention` whenever the shared blocks hold the rows' keys and values, e.g.
    when `shared_block_tables[g]` is the common start of the group's block tables; the shared
    length may end inside a block (a fork's partial block: the rest of that block is read
    through each row's own table).

    Args:
        q: `[B, Hq, D]` float16/bfloat16 (float32 also accepted).
        k_cache, v_cache: `[num_blocks, block_size, Hkv, D]` of q's dtype, or float8_e4m3fn with
            `k_scale`/`v_scale` (stored = value / scale).
        block_tables: `[B, max_blocks]` int32, valid block ids for every position `< seq_lens[b]`.
        seq_lens: `[B]` int32.
        group_rows: `[G, R]` int32: the rows of group g, padded with -1 (fixed shapes for CUDA
            graphs: padding groups are all -1). Each row is in at most one group.
        shared_lens: `[G]` int32, at most the `seq_lens` of each of the group's rows.
        shared_block_tables: `[G, max_shared_blocks]` int32.
        row_groups: `[B]` int32, the group of each row or -1; agrees with `group_rows`.
        scale, k_scale, v_scale, out: as in `paged_decode_attention`.

    Returns:
        `[B, Hq, D]` in q's dtype. Split counts depend only on shapes (CUDA graphs stay valid).

    Example::

        out = fastcot.ops.cascade_decode_attention(q, k_cache, v_cache, block_tables, seq_lens,
                                                   group_rows, shared_lens, shared_block_tables, row_groups)
    """
    num_blocks, block_size, num_kv_heads, head_dim = check_cache_pair(k_cache, v_cache)
    device = k_cache.device
    check_tensor("q", q, dim=3, dtypes=(torch.float16, torch.bfloat16, torch.float32), device=device)
    check_query_dtype(q, k_cache.dtype)
    check_heads(q.shape[1], num_kv_heads, q.shape[2], head_dim)
    k_scale, v_scale = check_scales(k_scale, v_scale, k_cache.dtype)
    scale = _check_scale(scale, head_dim)
    batch = q.shape[0]
    check_block_tables(block_tables, seq_lens, batch, num_blocks, block_size, device)
    _check_groups(group_rows, shared_lens, shared_block_tables, row_groups, seq_lens, batch, num_blocks, block_size,
                  device)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=device)
    else:
        check_buffer("out", out, shape=q.shape, dtype=q.dtype, device=device, of="q", not_aliasing=(("q", q),))
    q, block_tables = unit_stride_rows(q), unit_stride_rows(block_tables)
    shared_block_tables, group_rows = unit_stride_rows(shared_block_tables), unit_stride_rows(group_rows)
    seq_lens, shared_lens, row_groups = dense_input(seq_lens), dense_input(shared_lens), dense_input(row_groups)
    if batch > 0:
        backend = _backend.resolve("cascade_decode_attention", device)
        torch.ops.fastcot.cascade_decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, group_rows, shared_lens, shared_block_tables, row_groups,
            out, scale, k_scale, v_scale, backend,
        )
    return out


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite Python float or None, got {scale!r}")
    return float(scale)


def _check_groups(group_rows, shared_lens, shared_block_tables, row_groups, seq_lens, batch, num_blocks, block_size,
                  device) -> None:
    check_tensor("group_rows", group_rows, dim=2, dtypes=(torch.int32,), device=device)
    check_tensor("shared_lens", shared_lens, dim=1, dtypes=(torch.int32,), device=device)
    check_tensor("shared_block_tables", shared_block_tables, dim=2, dtypes=(torch.int32,), device=device)
    check_tensor("row_groups", row_groups, dim=1, dtypes=(torch.int32,), device=device)
    groups = group_rows.shape[0]
    if group_rows.shape[1] < 1:
        raise ValueError(f"group_rows must be [G, R] with R >= 1, got {list(group_rows.shape)}")
    if shared_lens.shape[0] != groups:
        raise ValueError(f"shared_lens must have {groups} entries (one per group_rows row), got {shared_lens.shape[0]}")
    if shared_block_tables.shape[0] != groups:
        raise ValueError(f"shared_block_tables must have {groups} rows (one per group), "
                         f"got {shared_block_tables.shape[0]}")
    if row_groups.shape[0] != batch:
        raise ValueError(f"row_groups must have {batch} entries (one per row of q), got {row_groups.shape[0]}")
    if batch > 0 and index_checks_enabled(device):
        _check_group_values(group_rows, shared_lens, shared_block_tables, row_groups, seq_lens, num_blocks,
                            block_size)


def _check_group_values(group_rows, shared_lens, shared_block_tables, row_groups, seq_lens, num_blocks,
                        block_size) -> None:
    """Index values, with one device read when all is well (every gather clamped, so a bad
    value cannot fault); the first violation is then explained."""
    groups, batch, device = group_rows.shape[0], row_groups.shape[0], row_groups.device
    if groups == 0:
        if bool((row_groups != -1).any()):
            raise ValueError("row_groups must be all -1 when there are no groups (group_rows has 0 rows)")
        return
    row_groups, group_rows, shared_lens = row_groups.long(), group_rows.long(), shared_lens.long()
    listed = group_rows >= 0
    owner = torch.arange(groups, device=device)[:, None].expand_as(group_rows)
    group_of_listed = row_groups[group_rows.clamp(0, batch - 1)]
    in_group = row_groups >= 0
    counts = torch.zeros(groups, dtype=torch.long, device=device).index_add_(
        0, row_groups.clamp(0, groups - 1), in_group.long())
    row_shared = torch.where(in_group, shared_lens[row_groups.clamp(0, groups - 1)], 0)
    needed = (shared_lens.clamp(min=0) + block_size - 1) // block_size
    used = torch.arange(shared_block_tables.shape[1], device=device)[None, :] < needed[:, None]
    bad_block = used & ((shared_block_tables < 0) | (shared_block_tables >= num_blocks))
    capacity = shared_block_tables.shape[1] * block_size
    flags = torch.stack([
        ((row_groups < -1) | (row_groups >= groups)).any(),
        ((group_rows < -1) | (group_rows >= batch)).any(),
        (listed & (group_of_listed != owner)).any(),
        (counts != listed.sum(dim=1)).any(),
        (shared_lens < 0).any(),
        (shared_lens > capacity).any(),
        (row_shared > seq_lens.long()).any(),
        bad_block.any(),
    ]).tolist()
    if not any(flags):
        return
    if flags[0]:
        raise ValueError(f"row_groups entries must be -1 or a group in [0, {groups}), got {row_groups.tolist()[:16]}")
    if flags[1]:
        raise ValueError(f"group_rows entries must be -1 or a row in [0, {batch}), got {group_rows.tolist()[:4]}...")
    if flags[2]:
        g, i = (int(x) for x in (listed & (group_of_listed != owner)).nonzero()[0])
        raise ValueError(f"group_rows[{g}, {i}] = {int(group_rows[g, i])} but row_groups of that row is "
                         f"{int(row_groups[group_rows[g, i]])}")
    if flags[3]:
        raise ValueError("every row with row_groups[b] = g >= 0 must appear exactly once in group_rows[g]")
    if flags[4]:
        raise ValueError(f"shared_lens must be >= 0, got {int(shared_lens.min())}")
    if flags[5]:
        raise ValueError(f"shared_block_tables are too short: {shared_block_tables.shape[1]} blocks of {block_size} "
                         f"hold {capacity} tokens but shared_lens has {int(shared_lens.max())}")
    if flags[6]:
        b = int((row_shared > seq_lens.long()).nonzero()[0])
        raise ValueError(f"row {b} is in group {int(row_groups[b])} whose shared_lens is {int(row_shared[b])}, "
                         f"more than seq_lens[{b}] = {int(seq_lens[b])}")
    g, col = (int(i) for i in bad_block.nonzero()[0])
    raise ValueError(f"shared_block_tables[{g}, {col}] = {int(shared_block_tables[g, col])} is not a block of "
                     f"this cache (num_blocks={num_blocks})")


# --- registered op ---------------------------------------------------------------------------


@torch.library.custom_op("fastcot::cascade_decode_attention", mutates_args=("out",))
def _cascade_decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, group_rows: torch.Tensor, shared_lens: torch.Tensor, shared_block_tables: torch.Tensor,
    row_groups: torch.Tensor, out: torch.Tensor, scale: float, k_scale: float, v_scale: float, backend: str,
) -> None:
    if backend == "triton":
        cascade_decode_triton(q, k_cache, v_cache, block_tables, seq_lens, group_rows, shared_lens,
                              shared_block_tables, row_groups, out, scale, k_scale, v_scale)
    elif backend == "torch":
        out.copy_(reference.cascade_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, group_rows,
                                                     shared_lens, shared_block_tables, row_groups, scale, k_scale,
                                                     v_scale))
    else:
        raise _backend.BackendError(f"backend {backend!r} has no cascade_decode_attention kernel")


@_cascade_decode_op.register_fake
def _(q, k_cache, v_cache, block_tables, seq_lens, group_rows, shared_lens, shared_block_tables, row_groups, out,
      scale, k_scale, v_scale, backend):
    return None


# --- Triton launcher -------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def cascade_splits(programs: int, capacity: int, sms: int) -> int:
    """Splits of a context of `capacity` tokens (a block-table width, never a length: CUDA
    graphs stay valid) so that `programs` x splits reach PROGRAMS_PER_SM programs per SM, each
    split keeping at least MIN_TOKENS_PER_SPLIT tokens, at most MAX_SPLITS."""
    cap = max(1, min(MAX_SPLITS, capacity // MIN_TOKENS_PER_SPLIT))
    return max(1, min(cap, -(-sms * PROGRAMS_PER_SM // max(1, programs))))


def prefix_tile(group: int, max_rows: int) -> tuple[int, int]:
    """(rows per prefix tile, tile height M): as many of a group's rows as fit MAX_TILE_ROWS
    query rows (rows x GQA heads), M padded to a power of two >= 16 for `tl.dot`."""
    rows = max(1, min(max_rows, MAX_TILE_ROWS // group))
    return rows, max(16, _pow2(rows * group))


def _kv_operands(q, k_cache, v_cache, scale, k_scale, v_scale):
    """Cache views and folded scales: a float8 cache goes in as uint8 codes that the kernels
    widen by bit operations to float16 holding value * 2^-8 (keys for bfloat16 tensor-core
    dots: bfloat16 holding value * 2^-120, q pre-scaled by 2^56), the powers of two folded
    into `qk_scale` and `v_scale` here."""
    interpreted = _backend.triton_interpreted(q.device)
    ieee = q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and interpreted)
    qk_scale = scale * k_scale * LOG2E
    consts = dict(IEEE_FP32=ieee, KV_FP8=False, K_BF16=False)
    if k_cache.dtype != FP8:
        return k_cache, v_cache, qk_scale, v_scale, consts
    k_bf16 = q.dtype == torch.bfloat16 and not ieee
    consts.update(KV_FP8=True, K_BF16=k_bf16)
    qk_scale *= 2.0 ** (64 if k_bf16 else 8)
    return k_cache.view(torch.uint8), v_cache.view(torch.uint8), qk_scale, v_scale * 2.0 ** 8, consts


def cascade_decode_triton(q, k_cache, v_cache, block_tables, seq_lens, group_rows, shared_lens, shared_block_tables,
                          row_groups, out, scale, k_scale, v_scale, *, prefix_splits=None, suffix_splits=None,
                          arch=None):
    """Launch the prefix pass, the suffix pass and the merge. `prefix_splits`/`suffix_splits`
    force split counts (tests); by default `cascade_splits` decides from shapes. `arch`: the SM
    version to build for (default the device's), which decides PDL (`_backend.triton_pdl`)."""
    from fastcot.kernels.triton.cascade_attention import (
        _cascade_merge_kernel,
        _cascade_prefix_kernel,
        _cascade_suffix_kernel,
    )

    batch, q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    groups, max_rows = group_rows.shape
    group = q_heads // num_kv_heads
    block_d = max(16, _pow2(head_dim))
    block_n = 64 if block_d <= 128 else 32
    rows, tile_m = prefix_tile(group, max_rows)
    chunks = -(-max_rows // rows)
    sms = num_sms(q.device)
    if groups == 0:
        prefix_splits = 0
    elif prefix_splits is None:
        prefix_splits = cascade_splits(groups * chunks * num_kv_heads, shared_block_tables.shape[1] * block_size, sms)
    if suffix_splits is None:
        suffix_splits = cascade_splits(batch * num_kv_heads, block_tables.shape[1] * block_size, sms)
    slots = prefix_splits + suffix_splits
    part_out = torch.empty((batch, q_heads, slots, block_d), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((batch, q_heads, slots), dtype=torch.float32, device=q.device)
    k_cache, v_cache, qk_scale, v_scale, consts = _kv_operands(q, k_cache, v_cache, scale, k_scale, v_scale)
    use_pdl = _backend.triton_pdl(q.device, arch)
    common = dict(stride_block=k_cache.stride(0), stride_slot=k_cache.stride(1), stride_head=k_cache.stride(2),
                  qk_scale=qk_scale, v_scale=v_scale, NUM_HEADS=q_heads, HEAD_DIM=head_dim, GROUP=group,
                  BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_SIZE=block_size, NUM_SLOTS=slots, **consts,
                  USE_PDL=use_pdl, launch_pdl=use_pdl)
    if prefix_splits > 0:
        _cascade_prefix_kernel[(groups * chunks, num_kv_heads, prefix_splits)](
            q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache, group_rows_ptr=group_rows,
            shared_lens_ptr=shared_lens, shared_tables_ptr=shared_block_tables,
            part_out_ptr=part_out, part_lse_ptr=part_lse,
            stride_q_b=q.stride(0), stride_q_h=q.stride(1), stride_group_rows=group_rows.stride(0),
            stride_shared_table=shared_block_tables.stride(0),
            MAX_ROWS=max_rows, ROWS=rows, M=tile_m, PREFIX_SPLITS=prefix_splits, **common,
            num_warps=4 if tile_m <= 32 else 8, num_stages=2,
        )
    # A zero-group launch still needs a valid pointer for shared_lens (never read: every row is -1).
    _cascade_suffix_kernel[(batch, num_kv_heads, suffix_splits)](
        q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_tables_ptr=block_tables, seq_lens_ptr=seq_lens,
        row_groups_ptr=row_groups, shared_lens_ptr=shared_lens if groups > 0 else seq_lens,
        part_out_ptr=part_out, part_lse_ptr=part_lse,
        stride_q_b=q.stride(0), stride_q_h=q.stride(1), stride_table_b=block_tables.stride(0),
        M=max(16, _pow2(group)), PREFIX_SPLITS=prefix_splits, SUFFIX_SPLITS=suffix_splits, **common,
        num_warps=4, num_stages=2,
    )
    _cascade_merge_kernel[(batch, q_heads)](
        part_out_ptr=part_out, part_lse_ptr=part_lse, row_groups_ptr=row_groups, out_ptr=out,
        stride_out_b=out.stride(0), stride_out_h=out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, PREFIX_SPLITS=prefix_splits, NUM_SLOTS=slots,
        SLOTS_PAD=max(2, _pow2(slots)), USE_PDL=use_pdl, num_warps=4, launch_pdl=use_pdl,
    )


def aot_specs():
    """The prefix pass at full tiles (M = 64) for GQA 1/4/8 and head sizes 64/128, 16-bit and
    float8 caches; the suffix pass; the merge; each also with PDL as sm_90 launches them
    (`pdl` variants, sm_90 only)."""
    from fastcot.kernels.aot import ARCHS, KernelSpec
    from fastcot.kernels.triton.cascade_attention import (
        _cascade_merge_kernel,
        _cascade_prefix_kernel,
        _cascade_suffix_kernel,
    )

    pointers = ("q_ptr", "k_cache_ptr", "v_cache_ptr", "part_out_ptr", "part_lse_ptr")
    strides = ("stride_q_h", "stride_block", "stride_slot", "stride_head")
    scalars = {"stride_q_b": "i32", "stride_q_h": "i32", "stride_block": "i64", "stride_slot": "i32",
               "stride_head": "i32", "qk_scale": "fp32", "v_scale": "fp32"}

    def consts(dtype, cache, head_dim, group, prefix_splits, slots, pdl):
        block_d = max(16, _pow2(head_dim))
        fp8 = cache == "fp8e4nv"
        return dict(NUM_HEADS=8 * group, HEAD_DIM=head_dim, GROUP=group, BLOCK_D=block_d,
                    BLOCK_N=64 if block_d <= 128 else 32, BLOCK_SIZE=16, NUM_SLOTS=slots,
                    PREFIX_SPLITS=prefix_splits, IEEE_FP32=False, KV_FP8=fp8, K_BF16=fp8 and dtype == "bf16",
                    USE_PDL=pdl)

    def kv(dtype, cache):
        return {"q_ptr": f"*{dtype}", "k_cache_ptr": "*u8" if cache == "fp8e4nv" else f"*{cache}",
                "v_cache_ptr": "*u8" if cache == "fp8e4nv" else f"*{cache}", "part_out_ptr": "*fp32",
                "part_lse_ptr": "*fp32"}

    specs = []
    for (dtype, cache, head_dim, group), pdl in itertools.product(
            [("fp16", "fp16", 128, 4), ("bf16", "bf16", 128, 8), ("fp16", "fp16", 64, 1), ("bf16", "fp8e4nv", 128, 4)],
            (False, True)):
        rows, tile_m = prefix_tile(group, 32)
        archs, tag = ((90,), " pdl") if pdl else (ARCHS, "")
        specs.append(KernelSpec(
            name=f"cascade_prefix {dtype} cache={cache} d{head_dim} gqa{group} rows={rows}{tag}",
            fn=_cascade_prefix_kernel, num_warps=4 if tile_m <= 32 else 8, num_stages=2, archs=archs,
            signature=kv(dtype, cache) | {"group_rows_ptr": "*i32", "shared_lens_ptr": "*i32",
                                          "shared_tables_ptr": "*i32", "stride_group_rows": "i32",
                                          "stride_shared_table": "i32"} | scalars,
            constexprs=consts(dtype, cache, head_dim, group, 16, 32, pdl) | dict(MAX_ROWS=32, ROWS=rows, M=tile_m),
            aligned=pointers + strides + ("group_rows_ptr", "shared_lens_ptr", "shared_tables_ptr"),
        ))
        specs.append(KernelSpec(
            name=f"cascade_suffix {dtype} cache={cache} d{head_dim} gqa{group}{tag}",
            fn=_cascade_suffix_kernel, num_warps=4, num_stages=2, archs=archs,
            signature=kv(dtype, cache) | {"block_tables_ptr": "*i32", "seq_lens_ptr": "*i32",
                                          "row_groups_ptr": "*i32", "shared_lens_ptr": "*i32",
                                          "stride_table_b": "i32"} | scalars,
            constexprs=consts(dtype, cache, head_dim, group, 16, 32, pdl) | dict(M=max(16, _pow2(group)),
                                                                            SUFFIX_SPLITS=16),
            aligned=pointers + strides + ("block_tables_ptr", "seq_lens_ptr", "row_groups_ptr", "shared_lens_ptr"),
        ))
    specs += [KernelSpec(
        name=f"cascade_merge fp16 d128 slots=32{' pdl' if pdl else ''}", fn=_cascade_merge_kernel, num_warps=4,
        num_stages=1, archs=(90,) if pdl else ARCHS,
        signature={"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "row_groups_ptr": "*i32", "out_ptr": "*fp16",
                   "stride_out_b": "i32", "stride_out_h": "i32"},
        constexprs=dict(HEAD_DIM=128, BLOCK_D=128, PREFIX_SPLITS=16, NUM_SLOTS=32, SLOTS_PAD=32, USE_PDL=pdl),
        aligned=("part_out_ptr", "part_lse_ptr", "row_groups_ptr", "out_ptr", "stride_out_b", "stride_out_h"),
    ) for pdl in (False, True)]
    return specs
