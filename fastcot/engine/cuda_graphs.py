"""Decode steps (and speculative verification steps, `VerifyGraphs`) captured as CUDA graphs,
one per padded batch size, sharing one memory pool per kind.

A decode step's shapes depend only on the batch size: block tables are kept at their full
width (the split-KV decode kernel picks its split count from that width), padding rows have
length 0 (attention returns zeros) and slot -1 (nothing is written). Each step copies its
inputs into static buffers and replays the graph of the smallest bucket that holds it, so the
host cost of launching dozens of kernels per layer disappears. Sampling runs after the graph.

With shared-prefix (cascade) decode each bucket of b rows also has a graph that calls
`cascade_decode_attention` on fixed-shape group buffers: `max(1, b // 2)` groups (every group
has at least 2 rows) of at most `GROUP_ROWS` rows, shared tables at the full table width.
Unused groups are padding (all rows -1, shared length 0: their programs exit at once) and
padding rows are in no group. A step whose batch shares no blocks replays the plain graph.
"""

from __future__ import annotations

import logging
import time

import torch

from fastcot.engine.metadata import GROUP_ROWS
from fastcot.layers.attention import AttentionMetadata, SharedPrefixGroups

logger = logging.getLogger("fastcot")


def batch_buckets(max_batch: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16))
    return sizes + [max_batch]


class DecodeGraphs:
    def __init__(self, model, kv_caches, *, max_batch: int, max_blocks_per_seq: int, device: torch.device,
                 cascade: bool = False):
        self.model = model
        self.kv_caches = kv_caches
        self.buckets = batch_buckets(max_batch)
        b = self.buckets[-1]
        self.input_ids = torch.zeros(b, dtype=torch.int64, device=device)
        self.positions = torch.zeros(b, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((b,), -1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(b, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((b, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.cascade = cascade
        if cascade:
            groups = max(1, b // 2)
            self.group_rows = torch.full((groups, GROUP_ROWS), -1, dtype=torch.int32, device=device)
            self.shared_lens = torch.zeros(groups, dtype=torch.int32, device=device)
            self.shared_block_tables = torch.zeros((groups, max_blocks_per_seq), dtype=torch.int32, device=device)
            self.row_groups = torch.full((b,), -1, dtype=torch.int32, device=device)
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.logits: dict[tuple[int, bool], torch.Tensor] = {}

    def _group_views(self, b: int) -> SharedPrefixGroups:
        groups = max(1, b // 2)
        return SharedPrefixGroups(group_rows=self.group_rows[:groups, : min(b, GROUP_ROWS)],
                                  shared_lens=self.shared_lens[:groups],
                                  shared_block_tables=self.shared_block_tables[:groups],
                                  row_groups=self.row_groups[:b])

    def _forward(self, b: int, cascade: bool = False) -> torch.Tensor:
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:b], block_tables=self.block_tables[:b], seq_lens=self.seq_lens[:b],
            shared_prefix=self._group_views(b) if cascade else None,
        )
        hidden = self.model(self.input_ids[:b], self.positions[:b], self.kv_caches, metadata)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so that the smaller ones fit in its pool. The
        warm-up runs (outside capture) also autotune kernels and build rope tables."""
        start = time.perf_counter()
        pool = None
        variants = (False, True) if self.cascade else (False,)
        for key in [(b, cascade) for b in reversed(self.buckets) for cascade in variants]:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(*key)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[key] = self._forward(*key)
            pool = graph.pool()
            self.graphs[key] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs of decode steps for %d batch sizes (1 to %d) in %.1f s",
                    len(self.buckets), self.buckets[-1], time.perf_counter() - start)

    def run(self, input_ids, positions, slot_mapping, seq_lens, block_tables,
            shared_prefix: SharedPrefixGroups | None = None) -> torch.Tensor | None:
        """Logits `[B, V]` of one decode step, or None when B exceeds the largest bucket.
        `shared_prefix` (from `shared_prefix_tensors`, rows of at most GROUP_ROWS) selects the
        bucket's cascade graph."""
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
        key = (b, shared_prefix is not None)
        if shared_prefix is not None:
            self._copy_groups(b, n, shared_prefix)
        self.graphs[key].replay()
        return self.logits[key][:n]

    def _copy_groups(self, b: int, n: int, groups: SharedPrefixGroups) -> None:
        if not self.cascade:
            raise RuntimeError("shared_prefix given to DecodeGraphs built without cascade=True")
        views = self._group_views(b)
        count, rows = groups.group_rows.shape
        width = groups.shared_block_tables.shape[1]
        if count > views.group_rows.shape[0] or rows > views.group_rows.shape[1]:
            raise ValueError(f"{count} groups of up to {rows} rows do not fit bucket {b}'s "
                             f"{list(views.group_rows.shape)} group buffers")
        views.group_rows.fill_(-1)
        views.group_rows[:count, :rows].copy_(groups.group_rows)
        views.shared_lens.zero_()
        views.shared_lens[:count].copy_(groups.shared_lens)
        views.shared_block_tables[:count, :width].copy_(groups.shared_block_tables)
        views.row_groups.fill_(-1)
        views.row_groups[:n].copy_(groups.row_groups)


class VerifyGraphs:
    """Speculative verification steps captured as CUDA graphs, one per padded batch size.

    A verification step feeds each of B sequences its last token and up to K drafts (at most
    `tokens_per_seq = K + 1` new tokens). A graph of bucket b takes `b * tokens_per_seq` query
    tokens and b + 1 sequences: the step's sequences keep their own spans, and the tokens
    that fill the bucket form one dummy sequence after them (its keys and values are not
    written: slot -1; it attends to block 0 of its all-zero table row, so every read stays in
    the cache), followed by empty sequences. The launch shapes then depend on the bucket
    alone (`max_query_len` is the bucket's token count), and each sequence's rows are
    computed as in an eager step. `capture=False` runs the same padded inputs eagerly (for
    tests of the layout without a GPU).
    """

    def __init__(self, model, kv_caches, *, max_batch: int, tokens_per_seq: int, max_blocks_per_seq: int,
                 device: torch.device, capture: bool = True):
        self.model, self.kv_caches, self.capture_graphs = model, kv_caches, capture
        self.buckets = [b for b in (1, 2, 4, 8, 16, 32) if b < max_batch] + [max_batch]
        self.tokens_per_seq = tokens_per_seq
        b, t = self.buckets[-1], self.buckets[-1] * tokens_per_seq
        self.input_ids = torch.zeros(t, dtype=torch.int64, device=device)
        self.positions = torch.zeros(t, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((t,), -1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(b + 1, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.zeros(b + 2, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((b + 1, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def _forward(self, b: int) -> torch.Tensor:
        t = b * self.tokens_per_seq
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:t], block_tables=self.block_tables[: b + 1],
            seq_lens=self.seq_lens[: b + 1], cu_seqlens_q=self.cu_seqlens_q[: b + 2], max_query_len=t,
        )
        hidden = self.model(self.input_ids[:t], self.positions[:t], self.kv_caches, metadata)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first (its pool serves the smaller ones), after a
        warm-up run of each on the current (valid) static inputs."""
        start = time.perf_counter()
        pool = None
        for b in reversed(self.buckets):
            self._fill_empty(b)
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
        logger.info("captured CUDA graphs of speculative verification for %d batch sizes (1 to %d, up to %d "
                    "tokens per sequence) in %.1f s", len(self.buckets), self.buckets[-1], self.tokens_per_seq,
                    time.perf_counter() - start)

    def _fill_empty(self, b: int) -> None:
        """Inputs of a bucket with no real sequence: one dummy sequence of all its tokens."""
        t = b * self.tokens_per_seq
        self.slot_mapping[:t].fill_(-1)
        self.positions[:t].copy_(torch.arange(t, device=self.positions.device))
        self.seq_lens.zero_()
        self.seq_lens[0] = t
        self.cu_seqlens_q.fill_(t)
        self.cu_seqlens_q[0] = 0
        self.block_tables.zero_()

    def run(self, input_ids, positions, metadata: AttentionMetadata) -> torch.Tensor | None:
        """Logits `[T, V]` of a verification step (a prefill-shaped step of B sequences and T
        tokens), or None when it does not fit the largest bucket."""
        n, t_real = metadata.seq_lens.shape[0], input_ids.shape[0]
        per = self.tokens_per_seq
        b = next((b for b in self.buckets if b >= n and b * per >= t_real), None)
        if b is None:
            return None
        if self.capture_graphs and not self.graphs:
            self.capture()
        t, pad, width = b * per, b * per - t_real, metadata.block_tables.shape[1]
        self.input_ids[:t_real].copy_(input_ids)
        self.input_ids[t_real:t].fill_(0)
        self.positions[:t_real].copy_(positions)
        self.positions[t_real:t].copy_(torch.arange(pad, device=positions.device))
        self.slot_mapping[:t_real].copy_(metadata.slot_mapping)
        self.slot_mapping[t_real:t].fill_(-1)
        self.seq_lens[:n].copy_(metadata.seq_lens)
        self.seq_lens[n] = pad  # the dummy sequence: its tokens are all new
        self.seq_lens[n + 1: b + 1].fill_(0)
        self.cu_seqlens_q[: n + 1].copy_(metadata.cu_seqlens_q)
        self.cu_seqlens_q[n + 1: b + 2].fill_(t)
        self.block_tables[:n, :width].copy_(metadata.block_tables)
        self.block_tables[n: b + 1].fill_(0)
        if self.capture_graphs:
            self.graphs[b].replay()
            return self.logits[b][:t_real]
        return self._forward(b)[:t_real]
