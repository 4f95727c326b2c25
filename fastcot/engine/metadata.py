"""Per-step attention metadata, passed explicitly down the model's forward call."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor | None = None
    max_query_len: int = 1

    @property
    def is_decode(self) -> bool:
        return self.cu_seqlens_q is None
