"""`PagedAttention`: write this step's keys and values to the cache, then attend; and the
per-step `AttentionMetadata` it reads (built by the engine, passed down the forward call)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fastcot import ops


@dataclass
class SharedPrefixGroups:
    """Rows of a decode step that share their leading KV blocks (`cascade_decode_attention`).

    Attributes:
        group_rows: `[G, R]` int32 rows of each group, -1 padded (a group of more rows than R
            is split into several groups with the same shared blocks).
        shared_lens: `[G]` int32 tokens the group's rows share (0 for a padding group).
        shared_block_tables: `[G, max_shared_blocks]` int32 the shared blocks.
        row_groups: `[B]` int32 group of each row, -1 for a row in no group.
    """

    group_rows: torch.Tensor
    shared_lens: torch.Tensor
    shared_block_tables: torch.Tensor
    row_groups: torch.Tensor


@dataclass
class AttentionMetadata:
    """What every attention layer needs to know about the tokens of one forward step.

    A step is either a decode step (exactly one new token per sequence, `cu_seqlens_q` None)
    or a prefill step (the new tokens of B sequences packed, `cu_seqlens_q` `[B+1]`).

    Attributes:
        slot_mapping: `[T]` int32 cache slot (`block * block_size + offset`) of each new
            token; -1 for padding tokens, which are not written.
        block_tables: `[B, max_blocks]` int32 physical blocks of each sequence.
        seq_lens: `[B]` int32 tokens in the cache for each sequence, this step's included.
        cu_seqlens_q: `[B+1]` int32 offsets of each sequence's new tokens, or None for decode.
        max_query_len: upper bound on any sequence's new tokens (sizes the prefill launch).
        shared_prefix: decode only: groups of rows that share leading blocks, read once per
            group by `cascade_decode_attention`; None for plain decode.
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor | None = None
    max_query_len: int = 1
    shared_prefix: SharedPrefixGroups | None = None

    @property
    def is_decode(self) -> bool:
        return self.cu_seqlens_q is None


class PagedAttention(nn.Module):
    """Attention over a paged KV cache for one layer.

    `forward(q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D], kv_cache, metadata) -> [T, Hq, D]`,
    where `kv_cache` is this layer's `(k_cache, v_cache)` pair, each
    `[num_blocks, block_size, Hkv, D]`. Float8 caches use `k_scale`/`v_scale`.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float | None = None,
                 k_scale: float = 1.0, v_scale: float = 1.0):
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
        self.k_scale, self.v_scale = k_scale, v_scale

    def forward(self, q, k, v, kv_cache: tuple[torch.Tensor, torch.Tensor], metadata: AttentionMetadata):
        k_cache, v_cache = kv_cache
        scales = dict(k_scale=self.k_scale, v_scale=self.v_scale)
        ops.write_kv_cache(k, v, k_cache, v_cache, metadata.slot_mapping, **scales)
        if metadata.is_decode and metadata.shared_prefix is not None:
            groups = metadata.shared_prefix
            return ops.cascade_decode_attention(
                q, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, groups.group_rows,
                groups.shared_lens, groups.shared_block_tables, groups.row_groups, scale=self.scale, **scales,
            )
        if metadata.is_decode:
            return ops.paged_decode_attention(
                q, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, scale=self.scale, **scales
            )
        return ops.paged_prefill_attention(
            q, k_cache, v_cache, metadata.block_tables, metadata.cu_seqlens_q, metadata.seq_lens,
            scale=self.scale, max_query_len=metadata.max_query_len, **scales,
        )

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
