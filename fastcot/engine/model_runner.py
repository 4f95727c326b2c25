"""Turns a scheduled batch into model inputs and attention metadata, runs it, and samples.

Prefill steps run eagerly; on a GPU decode steps replay CUDA graphs (`cuda_graphs.py`)
unless `enforce_eager`.
"""

from __future__ import annotations

import itertools

import torch

from fastcot.engine.metadata import AttentionMetadata
from fastcot.engine.sampling import Sampler, SamplingTensors, presence_mask
from fastcot.engine.scheduler import Batch
from fastcot.engine.sequence import Sequence


class ModelRunner:
    """Owns the KV caches (one `(k_cache, v_cache)` pair per layer) and runs steps."""

    def __init__(self, model, *, num_blocks: int, block_size: int, kv_cache_dtype: torch.dtype, device: torch.device,
                 max_blocks_per_seq: int, max_num_seqs: int = 256, enforce_eager: bool = True):
        config = model.config
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = device
        shape = config.kv_cache_shape(num_blocks, block_size)
        self.kv_caches = [
            (torch.zeros(shape, dtype=kv_cache_dtype, device=device), torch.zeros(shape, dtype=kv_cache_dtype, device=device))
            for _ in range(config.num_hidden_layers)
        ]
        self.sampler = Sampler()
        # Block tables live on the device, one row per live sequence, updated by the entries
        # that changed: a decode step's host work stays flat however long the sequences grow.
        self.max_blocks_per_seq = max_blocks_per_seq
        self.tables = torch.zeros((16, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.rows: dict[int, tuple[int, int]] = {}  # seq_id -> (row, entries synced)
        self.free_rows = list(range(15, -1, -1))
        self.graphs = None
        if device.type == "cuda" and not enforce_eager:
            from fastcot.engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(model, self.kv_caches, max_batch=max_num_seqs,
                                       max_blocks_per_seq=max_blocks_per_seq, device=device)

    def release(self, seq: Sequence) -> None:
        """Forget a finished sequence's block-table row."""
        entry = self.rows.pop(seq.seq_id, None)
        if entry is not None:
            self.free_rows.append(entry[0])

    def _row(self, seq: Sequence, rewrite: bool) -> int:
        entry = self.rows.get(seq.seq_id)
        if entry is None:
            if not self.free_rows:
                grown = self.tables.shape[0]
                self.tables = torch.cat([self.tables, torch.zeros_like(self.tables)])
                self.free_rows = list(range(2 * grown - 1, grown - 1, -1))
            entry = (self.free_rows.pop(), 0)
            rewrite = True
        row, synced = entry
        table = seq.block_table
        start = 0 if rewrite else synced
        if len(table) > start:
            self.tables[row, start:len(table)] = self._tensor(table[start:], torch.int32)
        self.rows[seq.seq_id] = (row, len(table))
        return row

    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def _tensor(self, values, dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def _block_tables(self, batch: Batch) -> torch.Tensor:
        # A prefill (re)allocates, copy-on-write replaces a last block: rewrite those rows;
        # otherwise tables only grow at the end.
        rewrite = batch.is_prefill or bool(batch.block_copies)
        rows = [self._row(s, rewrite) for s in batch.seqs]
        width = max(len(s.block_table) for s in batch.seqs)
        return self.tables[self._tensor(rows, torch.int64), :width]

    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        seqs = batch.seqs
        if batch.is_prefill:
            spans = [(s.num_computed, end) for s, end in zip(seqs, batch.chunk_ends)]
            ids = [t for s, (a, b) in zip(seqs, spans) for t in s.token_ids[a:b]]
            positions = [p for a, b in spans for p in range(a, b)]
            slots = [x for s, (a, b) in zip(seqs, spans) for x in self._slots(s, a, b)]
            q_lens = [b - a for a, b in spans]
            metadata = AttentionMetadata(
                slot_mapping=self._tensor(slots, torch.int32),
                block_tables=self._block_tables(batch),
                seq_lens=self._tensor(batch.chunk_ends, torch.int32),
                cu_seqlens_q=self._tensor([0, *itertools.accumulate(q_lens)], torch.int32),
                max_query_len=max(q_lens),
            )
        else:
            ids = [s.token_ids[-1] for s in seqs]
            positions = [len(s) - 1 for s in seqs]
            metadata = AttentionMetadata(
                slot_mapping=self._tensor([self._slots(s, len(s) - 1, len(s))[0] for s in seqs], torch.int32),
                block_tables=self._block_tables(batch),
                seq_lens=self._tensor([len(s) for s in seqs], torch.int32),
            )
        return self._tensor(ids, torch.int64), self._tensor(positions, torch.int64), metadata

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        src = self._tensor([s for s, _ in pairs], torch.int64)
        dst = self._tensor([d for _, d in pairs], torch.int64)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    @torch.inference_mode()
    def step(self, batch: Batch, rows: list[Sequence], row_index: list[int]) -> list[int]:
        """Run the batch and sample one token for each of `rows`, from the logits of batch
        sequence `row_index[i]` (the n samples of a request all draw from its one prefill)."""
        self.copy_blocks(batch.block_copies)
        input_ids, positions, metadata = self.prepare(batch)
        logits = None
        if self.graphs is not None and not batch.is_prefill:
            logits = self.graphs.run(input_ids, positions, metadata.slot_mapping, metadata.seq_lens,
                                     metadata.block_tables)
        if logits is None:
            hidden = self.model(input_ids, positions, self.kv_caches, metadata)
            if not rows:  # prefill chunks that end before their sequence does
                return []
            if batch.is_prefill:
                hidden = hidden[metadata.cu_seqlens_q[1:].long() - 1]
            logits = self.model.compute_logits(hidden)
        if row_index != list(range(len(batch.seqs))):
            logits = logits[self._tensor(row_index, torch.int64)]
        tensors = SamplingTensors.from_params(
            [s.params for s in rows], output_lens=[s.num_output for s in rows], keys=[s.noise_key for s in rows],
            eos_token_ids=self.config.eos_token_ids, device=self.device,
        )
        presence = None
        if tensors.do_penalty:
            presence = presence_mask([s.token_ids for s in rows], logits.shape[1], self.device)
        return self.sampler(logits, tensors, presence).tolist()
