"""Decode steps under CUDA graphs with tensor parallelism (NCCL; opt-in, see below).

Every rank captures the same decode graphs (`fastcot.engine.cuda_graphs.DecodeGraphs` over its
own shard: the all-reduces and the logits all-gather are NCCL collectives inside the graphs),
in the same order, so their warm-up runs meet in the same collectives. Each decode step rank 0
announces the step (`GRAPH_STEP`, with the same payload as an eager step); every rank copies
it into its static buffers and replays the graph of the same batch bucket.

Not verified on GPUs (none were available when it was written): it is off unless
`FASTCOT_TP_CUDA_GRAPHS=1`; by default tensor-parallel decode runs eagerly.
"""

from __future__ import annotations

import os

from fastcot.distributed import protocol
from fastcot.engine.cuda_graphs import DecodeGraphs
from fastcot.layers.attention import AttentionMetadata

ENABLE_ENV = "FASTCOT_TP_CUDA_GRAPHS"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "0") == "1"


class ParallelDecodeGraphs(DecodeGraphs):
    """Rank 0's decode graphs; `owner` is its `TensorParallelModel`."""

    def __init__(self, owner, kv_caches, *, max_batch: int, max_blocks_per_seq: int, device):
        super().__init__(owner.local, kv_caches, max_batch=max_batch, max_blocks_per_seq=max_blocks_per_seq,
                         device=device)
        self.owner = owner
        self.max_batch, self.max_blocks_per_seq = max_batch, max_blocks_per_seq

    def capture(self) -> None:
        self.owner.ensure_allocated(self.kv_caches)
        self.owner._announce(protocol.CAPTURE, self.max_batch, self.max_blocks_per_seq)
        super().capture()

    def run(self, input_ids, positions, slot_mapping, seq_lens, block_tables):
        if input_ids.shape[0] > self.buckets[-1]:
            return None  # the caller runs the step eagerly, announced as a FORWARD

        def step():
            if not self.graphs:
                self.capture()
            metadata = AttentionMetadata(slot_mapping=slot_mapping, block_tables=block_tables, seq_lens=seq_lens)
            values, payload = protocol.pack_forward(input_ids, positions, metadata)
            self.owner._announce(protocol.GRAPH_STEP, *values, payload=payload)
            return DecodeGraphs.run(self, input_ids, positions, slot_mapping, seq_lens, block_tables)

        return self.owner._guarded(step)
