"""Decode steps captured as CUDA graphs, one per padded batch size, sharing one memory pool.

A decode step's shapes depend only on the batch size: block tables are kept at their full
width (the split-KV decode kernel picks its split count from that width), padding rows have
length 0 (attention returns zeros) and slot -1 (nothing is written). Each step copies its
inputs into static buffers and replays the graph of the smallest bucket that holds it, so the
host cost of launching dozens of kernels per layer disappears. Sampling runs after the graph.
"""

from __future__ import annotations

import logging
import time

import torch

from fastcot.layers.attention import AttentionMetadata

logger = logging.getLogger("fastcot")


def batch_buckets(max_batch: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16))
    return sizes + [max_batch]


class DecodeGraphs:
    def __init__(self, model, kv_caches, *, max_batch: int, max_blocks_per_seq: int, device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.buckets = batch_buckets(max_batch)
        b = self.buckets[-1]
        self.input_ids = torch.zeros(b, dtype=torch.int64, device=device)
        self.positions = torch.zeros(b, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((b,), -1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(b, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((b, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def _forward(self, b: int) -> torch.Tensor:
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:b], block_tables=self.block_tables[:b], seq_lens=self.seq_lens[:b]
        )
        hidden = self.model(self.input_ids[:b], self.positions[:b], self.kv_caches, metadata)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so that the smaller ones fit in its pool. The
        warm-up runs (outside capture) also autotune kernels and build rope tables."""
        start = time.perf_counter()
        pool = None
        for b in reversed(self.buckets):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(b)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[b] = self._forward(b)
            pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs of decode steps for %d batch sizes (1 to %d) in %.1f s",
                    len(self.buckets), self.buckets[-1], time.perf_counter() - start)

    def run(self, input_ids, positions, slot_mapping, seq_lens, block_tables) -> torch.Tensor | None:
        """Logits `[B, V]` of one decode step, or None when B exceeds the largest bucket."""
        n = input_ids.shape[0]
        b = next((b for b in self.buckets if b >= n), None)
        if b is None:
            return None
        if not self.graphs:
            self.capture()
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(slot_mapping)
        self.slot_mapping[n:b].fill_(-1)
        self.seq_lens[:n].copy_(seq_lens)
        self.seq_lens[n:b].fill_(0)
        self.block_tables[:n, : block_tables.shape[1]].copy_(block_tables)
        self.graphs[b].replay()
        return self.logits[b][:n]
