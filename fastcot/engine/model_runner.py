"""Turns a scheduled batch into model inputs and attention metadata, runs it, and samples.

Prefill steps run eagerly; on a GPU decode steps and small speculative verification steps
replay CUDA graphs (`cuda_graphs.py`) unless `enforce_eager`.

A decode step's host work is kept flat in the sequences' lengths and small in the batch
size. Block tables live on the device, one row ("slot") per live sequence, and a decode
batch's sequences hold slots `0..B-1` in batch order, so its block tables are a view. While a
decode batch is the same list of sequences as the previous decode step (the steady state of
long generations), its inputs advance in place on the device: the input ids are the ids just
sampled, positions, lengths and cache slots move on by one, only the table entries of
sequences that entered a new block are written, and the sampling tensors (and the
repetition-penalty presence mask) are reused. Any other batch rebuilds them from the
sequences.

Rows that share leading KV blocks (the `n` samples of a request, prefix-cache hits) decode
with shared-prefix (cascade) attention when `cascade_decode` is on: the groups are found when
a decode batch is rebuilt (`fastcot.engine.metadata.shared_prefix_groups`) and kept while it
advances in place, since new blocks are private; a copy-on-write recomputes them.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass

import torch

from fastcot.engine.block_manager import BlockManager
from fastcot.engine.confidence import ConfidenceRows
from fastcot.engine.metadata import shared_prefix_groups, shared_prefix_tensors
from fastcot.engine.sampling import (
    Sampler,
    SamplingTensors,
    compute_logprobs,
    count_tokens_,
    output_counts,
    pack,
    presence_mask,
    record_tokens_,
)
from fastcot.engine.scheduler import Batch
from fastcot.engine.sequence import Sequence
from fastcot.layers.attention import AttentionMetadata, SharedPrefixGroups

# Shared-prefix decode needs at least this many shared tokens by default: below it, the extra
# pass and merge cost more than the reads they save (untuned, unmeasured).
CASCADE_MIN_SHARED_TOKENS = 512


@dataclass
class _DecodeState:
    """Inputs of the last decode step, advanced in place while its sequences stay the same."""

    seqs: list[Sequence]
    row: dict[int, int]  # seq_id -> row in the batch (== its slot)
    positions: torch.Tensor  # [B] int64, the position of each sequence's newest token
    seq_lens: torch.Tensor  # [B] int32
    slot_mapping: torch.Tensor  # [B] int32
    max_len: int
    tensors: SamplingTensors | None = None  # reused, advanced, while no row suppresses ids
    num_logprobs: int | None = None  # most top log-probabilities any row asks for
    confidence: tuple[int, int] | None = None  # (largest top-k, read interval) when a row tracks confidence
    next_ids: torch.Tensor | None = None  # [B] int64, the ids sampled by that step
    shared_prefix: SharedPrefixGroups | None = None  # rows sharing leading blocks, with cascade decode


class _TokenRows:
    """A `[capacity, V]` tensor with one row per slot, describing a sequence's tokens for the
    penalties (`build([seq], V, device)`: presence of prompt and output tokens, or counts of
    output tokens); a row is built once per sequence, then updated on the device with each
    token the sequence samples (`record`)."""

    def __init__(self, dtype: torch.dtype, build, record):
        self.dtype, self.build, self.record = dtype, build, record
        self.rows: torch.Tensor | None = None
        self.ok: set[int] = set()  # seq_ids whose row is up to date

    def view(self, seqs: list[Sequence], capacity: int, vocab_size: int, device) -> torch.Tensor:
        """`[B, V]` rows of a decode batch (its sequences hold slots 0..B-1)."""
        if self.rows is None or self.rows.shape[1] != vocab_size:
            self.rows = torch.zeros((capacity, vocab_size), dtype=self.dtype, device=device)
            self.ok.clear()
        for i, seq in enumerate(seqs):
            if seq.seq_id not in self.ok:
                self.rows[i] = self.build([seq], vocab_size, device)[0]
                self.ok.add(seq.seq_id)
        return self.rows[: len(seqs)]

    def grow(self) -> None:
        if self.rows is not None:
            self.rows = torch.cat([self.rows, torch.zeros_like(self.rows)])

    def permute(self, index: torch.Tensor) -> None:
        if self.rows is not None:
            self.rows[: index.shape[0]] = self.rows[index]


def _presence(seqs, vocab_size, device):
    return presence_mask([s.token_ids for s in seqs], vocab_size, device)


def _counts(seqs, vocab_size, device):
    return output_counts([s.token_ids[s.prompt_len:] for s in seqs], vocab_size, device)


def _draft_token_rows(batch: Batch, vocab_size: int, device, *, presence: bool, counts: bool):
    """The penalty state plain decoding has at each position a speculative step samples, one
    row per position: `[R, V]` presence of the prompt and output tokens before it and `[R, V]`
    counts of the output ones (drafts before the position included), or None where unused."""
    if not (presence or counts):
        return None, None
    seqs = batch.seqs
    n = [end - s.num_computed for s, end in zip(seqs, batch.chunk_ends)]
    rows, tokens, at = [], [], 0  # (row, draft token) pairs: position j sees the drafts before it
    for seq, count in zip(seqs, n):
        drafts = seq.token_ids[seq.num_computed + 1: seq.num_computed + count]
        for j in range(1, count):
            rows += [at + j] * j
            tokens += drafts[:j]
        at += count
    # Built on the device: one [B, V] base row per sequence crosses, not one per position.
    repeats = pack("q", n, torch.int64, device)
    index = (pack("q", rows, torch.int64, device), pack("q", tokens, torch.int64, device))
    present = counted = None
    if presence:
        present = presence_mask([s.token_ids[: s.num_computed + 1] for s in seqs], vocab_size, device)
        present = present.repeat_interleave(repeats, dim=0, output_size=at)
        if rows:
            present[index] = True
    if counts:
        counted = output_counts([s.token_ids[s.prompt_len: s.num_computed + 1] for s in seqs], vocab_size, device)
        counted = counted.repeat_interleave(repeats, dim=0, output_size=at)
        if rows:
            counted.index_put_(index, torch.ones(len(rows), dtype=counted.dtype, device=device), accumulate=True)
    return present, counted


class ModelRunner:
    """Owns the KV caches (one `(k_cache, v_cache)` pair per layer) and runs steps.

    Callers that change a running sequence's tokens outside `step` must call `invalidate()`.
    Block tables need no such care: before each step the runner writes every change that
    the block manager recorded (`BlockManager.pop_table_changes`), whoever made it.
    """

    def __init__(self, model, *, block_manager: BlockManager, kv_cache_dtype: torch.dtype, device: torch.device,
                 max_blocks_per_seq: int, max_num_seqs: int = 256, enforce_eager: bool = True,
                 cascade_decode: bool | None = None, cascade_min_shared_tokens: int | None = None,
                 speculative_tokens: int = 0, speculative_batch: int = 0):
        config = model.config
        self.model = model
        self.config = config
        self.blocks = block_manager
        self.block_size = block_size = block_manager.block_size
        self.device = device
        shape = config.kv_cache_shape(block_manager.num_blocks, block_size)
        self.kv_caches = [
            (torch.zeros(shape, dtype=kv_cache_dtype, device=device), torch.zeros(shape, dtype=kv_cache_dtype, device=device))
            for _ in range(config.num_hidden_layers)
        ]
        self.sampler = Sampler()
        self.max_blocks_per_seq = max_blocks_per_seq
        capacity = min(max_num_seqs, 16)
        self.tables = torch.zeros((capacity, max_blocks_per_seq), dtype=torch.int32, device=device)
        # Per-slot penalty state, made when a row first needs it: repetition penalty
        # (presence in prompt and output) and presence/frequency penalties (output counts).
        self.presence = _TokenRows(torch.bool, _presence, record_tokens_)
        self.counts = _TokenRows(torch.int32, _counts, count_tokens_)
        # Per-slot path confidence (SamplingParams.confidence_window); `last_confidence` holds
        # what the last step read of it, per row (None where not read or not tracked).
        self.confidence = ConfidenceRows(capacity, device)
        self.last_confidence: list | None = None
        self.rows: dict[int, int] = {}  # seq_id -> slot
        self.owner: list[int | None] = [None] * capacity  # slot -> seq_id
        self.free_slots = list(range(capacity - 1, -1, -1))  # lowest last
        self.width = 0  # most table entries written in any slot
        self._decode: _DecodeState | None = None
        # Per row of the last step: (sampled token's log-probability, its rank, top ids, their
        # log-probabilities), or None where the request did not ask; None if no row did.
        self.last_logprobs: list[tuple | None] | None = None
        # Per prefill sequence asking for prompt logprobs: (sequence, index of the first prompt
        # token scored, and per scored token the same tuple as `last_logprobs`).
        self.last_prompt_logprobs: list[tuple] | None = None
        self.cascade_decode, self.cascade_min_shared_tokens = cascade_settings(
            device, cascade_decode, cascade_min_shared_tokens)
        if getattr(model, "decode_graphs", None) is not None:
            # Tensor parallelism: the other ranks receive plain decode metadata (no groups), and
            # every rank must capture the same graphs, so shared-prefix decode stays off.
            if cascade_decode:
                raise ValueError("cascade_decode=True is not supported with tensor parallelism "
                                 "(tensor_parallel_size > 1); leave it None or False")
            self.cascade_decode = False
        self.last_verify_logprobs: list[list[tuple | None]] | None = None  # see `verify`
        self.graphs = None
        if device.type == "cuda" and not enforce_eager:
            from fastcot.engine.cuda_graphs import DecodeGraphs

            make = getattr(model, "decode_graphs", None)  # tensor parallelism: every rank captures
            if make is None:
                make = functools.partial(DecodeGraphs, model, cascade=self.cascade_decode)
            self.graphs = make(self.kv_caches, max_batch=max_num_seqs, max_blocks_per_seq=max_blocks_per_seq,
                               device=device)
        self.verify_graphs = None  # small speculative verification steps, `speculative_tokens` drafts at most
        if self.graphs is not None and speculative_tokens and getattr(model, "decode_graphs", None) is None:
            from fastcot.engine.cuda_graphs import VerifyGraphs

            self.verify_graphs = VerifyGraphs(model, self.kv_caches, max_batch=min(speculative_batch, max_num_seqs),
                                              tokens_per_seq=speculative_tokens + 1,
                                              max_blocks_per_seq=max_blocks_per_seq, device=device)

    # ---- slots and block tables ------------------------------------------------------------

    def invalidate(self) -> None:
        """Rebuild the next decode step's inputs from the sequences."""
        self._decode = None

    def reset(self) -> None:
        """Forget every slot and cached input (after a failed step): the next step rebuilds
        its inputs and writes each sequence's block table whole."""
        self.rows.clear()
        self.owner = [None] * len(self.owner)
        self.free_slots = list(range(len(self.owner) - 1, -1, -1))
        self.width = 0
        self.presence.ok.clear()
        self.counts.ok.clear()
        self.confidence.reset()
        self._decode = None
        self.last_logprobs = self.last_prompt_logprobs = None
        self.blocks.pop_table_changes()

    def release(self, seq: Sequence) -> None:
        """Forget a finished or preempted sequence's slot."""
        slot = self.rows.pop(seq.seq_id, None)
        self.confidence.release(seq, slot)
        if slot is not None:
            self.owner[slot] = None
            self.free_slots.append(slot)
            self.free_slots.sort(reverse=True)
        self.presence.ok.discard(seq.seq_id)
        self.counts.ok.discard(seq.seq_id)
        self._decode = None

    def _slot(self, seq: Sequence) -> int:
        slot = self.rows.get(seq.seq_id)
        if slot is None:
            if not self.free_slots:
                self._grow()
            slot = self.rows[seq.seq_id] = self.free_slots.pop()
            self.owner[slot] = seq.seq_id
        return slot

    def _grow(self) -> None:
        capacity = self.tables.shape[0]
        self.tables = torch.cat([self.tables, torch.zeros_like(self.tables)])
        self.presence.grow()
        self.counts.grow()
        self.confidence.grow()
        self.owner += [None] * capacity
        self.free_slots = list(range(2 * capacity - 1, capacity - 1, -1)) + self.free_slots

    def _sync_tables(self, seqs) -> None:
        """Bring the device rows up to date before a step: each of `seqs` (this step's
        sequences) gets a slot, a new one written whole, and every other row gets the table
        entries the block manager changed since the last step, in one indexed copy."""
        changes = self.blocks.pop_table_changes()
        for seq in seqs:
            if seq.seq_id not in self.rows:
                self._slot(seq)
                changes[seq.seq_id] = (seq, 0)
        if not changes:
            return
        index, vals, stride = [], [], self.tables.stride(0)
        for seq, start in changes.values():
            slot = self.rows.get(seq.seq_id)
            if slot is None:
                continue  # no row: it is written whole when it gets one
            table = seq.block_table
            if len(table) > start:
                base = slot * stride
                index += range(base + start, base + len(table))
                vals += table[start:]
                self.width = max(self.width, len(table))
        if vals:
            _put(self.tables.view(-1), index, vals, self.device)

    def _arrange(self, seqs: list[Sequence]) -> None:
        """Move slots so that `seqs[i]` holds slot i (one gather of the live rows)."""
        want = [self._slot(s) for s in seqs]
        if want == list(range(len(seqs))):
            return
        taken = set(want)
        perm = want + [slot for slot, owner in enumerate(self.owner) if owner is not None and slot not in taken]
        index = pack("q", perm, torch.int64, self.device)
        n = len(perm)
        self.tables[:n, : self.width] = self.tables[index, : self.width]
        self.presence.permute(index)
        self.counts.permute(index)
        self.confidence.permute(index)
        owners = [self.owner[p] for p in perm]
        for slot, seq_id in enumerate(owners):
            self.rows[seq_id] = slot
        self.owner = owners + [None] * (len(self.owner) - n)
        self.free_slots = list(range(len(self.owner) - 1, n - 1, -1))

    # ---- inputs ------------------------------------------------------------------------------

    def _tensor(self, values, dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        return self._prepare_prefill(batch) if batch.is_prefill else self._prepare_decode(batch)

    def _prepare_prefill(self, batch: Batch):
        seqs, bs = batch.seqs, self.block_size
        if self._decode is not None and any(s.seq_id in self._decode.row for s in seqs):
            self._decode = None
        for seq in seqs:
            self.presence.ok.discard(seq.seq_id)
            self.counts.ok.discard(seq.seq_id)
        self._sync_tables(seqs)
        slots = [self.rows[s.seq_id] for s in seqs]
        spans = [(s.num_computed, end) for s, end in zip(seqs, batch.chunk_ends)]
        ids = [t for s, (a, b) in zip(seqs, spans) for t in s.token_ids[a:b]]
        positions = [p for a, b in spans for p in range(a, b)]
        slot_mapping = [s.block_table[p // bs] * bs + p % bs for s, (a, b) in zip(seqs, spans) for p in range(a, b)]
        q_lens = [b - a for a, b in spans]
        width = max(len(s.block_table) for s in seqs)
        metadata = AttentionMetadata(
            slot_mapping=self._tensor(slot_mapping, torch.int32),
            block_tables=self.tables[self._tensor(slots, torch.int64), :width],
            seq_lens=self._tensor(batch.chunk_ends, torch.int32),
            cu_seqlens_q=self._tensor([0, *itertools.accumulate(q_lens)], torch.int32),
            max_query_len=max(q_lens),
        )
        return self._tensor(ids, torch.int64), self._tensor(positions, torch.int64), metadata

    def _prepare_decode(self, batch: Batch):
        seqs, bs, d = batch.seqs, self.block_size, self._decode
        if d is not None and d.next_ids is not None and d.seqs == seqs:
            # The same sequences as the last decode step, each one token longer.
            d.positions.add_(1)
            d.seq_lens.add_(1)
            d.slot_mapping.add_(1)
            d.max_len += 1
            self._sync_tables(())
            if batch.grown:  # a new (or copied) last block: its first slot
                rows = [d.row[s.seq_id] for s in batch.grown]
                slots = [s.block_table[(len(s) - 1) // bs] * bs + (len(s) - 1) % bs for s in batch.grown]
                _put(d.slot_mapping, rows, slots, self.device)
            input_ids = d.next_ids
            d.next_ids = None
            if self.cascade_decode and batch.block_copies:  # a shared block was copied
                d.shared_prefix = self._shared_prefix(seqs)
        else:
            self._sync_tables(seqs)
            self._arrange(seqs)
            lens = [len(s) for s in seqs]
            positions = [n - 1 for n in lens]
            slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)]
            ints = pack("i", lens + slots, torch.int32, self.device).view(2, -1)
            d = self._decode = _DecodeState(
                seqs=list(seqs), row={s.seq_id: i for i, s in enumerate(seqs)},
                positions=pack("q", positions, torch.int64, self.device),
                seq_lens=ints[0], slot_mapping=ints[1], max_len=max(lens),
                num_logprobs=_num_logprobs(seqs), confidence=_confidence(seqs),
            )
            if self.cascade_decode:
                d.shared_prefix = self._shared_prefix(seqs)
            input_ids = pack("q", [s.token_ids[-1] for s in seqs], torch.int64, self.device)
        metadata = AttentionMetadata(
            slot_mapping=d.slot_mapping,
            block_tables=self.tables[: len(seqs), : -(-d.max_len // bs)],
            seq_lens=d.seq_lens,
            shared_prefix=d.shared_prefix,
        )
        return input_ids, d.positions, metadata

    def _shared_prefix(self, seqs: list[Sequence]) -> SharedPrefixGroups | None:
        """Groups of this decode batch's rows that share leading blocks, or None if none do."""
        groups = shared_prefix_groups([s.block_table for s in seqs], [len(s) for s in seqs], self.block_size,
                                      min_shared_tokens=self.cascade_min_shared_tokens)
        return shared_prefix_tensors(groups, len(seqs), self.device) if groups else None

    def _sampling_tensors(self, rows: list[Sequence]) -> SamplingTensors:
        return SamplingTensors.from_params(
            [s.params for s in rows], output_lens=[s.num_output for s in rows], keys=[s.noise_key for s in rows],
            eos_token_ids=self.config.eos_token_ids, device=self.device,
        )

    @torch.inference_mode()
    def replace_sampled(self, rows: list[Sequence], replaced: list[tuple[int, int]]) -> None:
        """The engine emitted other tokens than the last step sampled for some rows
        (`(row, token)` pairs): the next decode step feeds those instead."""
        d = self._decode
        if d is not None and d.next_ids is not None and d.seqs == rows:
            _put(d.next_ids, [i for i, _ in replaced], [t for _, t in replaced], self.device, torch.int64)
        for i, _ in replaced:  # their rows recorded the sampled token
            self.presence.ok.discard(rows[i].seq_id)
            self.counts.ok.discard(rows[i].seq_id)

    # ---- steps -------------------------------------------------------------------------------

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        if hasattr(self.model, "copy_blocks"):  # tensor parallelism: the other ranks copy theirs
            self.model.copy_blocks(pairs)
        src = self._tensor([s for s, _ in pairs], torch.int64)
        dst = self._tensor([d for _, d in pairs], torch.int64)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    @torch.inference_mode()
    def step(self, batch: Batch, rows: list[Sequence], row_index: list[int]) -> list[int]:
        """Run the batch and sample one token for each of `rows`, from the logits of batch
        sequence `row_index[i]` (the n samples of a request all draw from its one prefill;
        a decode step samples every batch sequence in order)."""
        for seq in batch.preempted:
            self.release(seq)
        self.last_logprobs = self.last_prompt_logprobs = None
        self.last_confidence = None
        self.copy_blocks(batch.block_copies)
        input_ids, positions, metadata = self.prepare(batch)
        logits = None
        if self.graphs is not None and not batch.is_prefill:
            logits = self.graphs.run(input_ids, positions, metadata.slot_mapping, metadata.seq_lens,
                                     metadata.block_tables, shared_prefix=metadata.shared_prefix)
        if logits is None:
            hidden = self.model(input_ids, positions, self.kv_caches, metadata)
            if batch.is_prefill:
                if any(s.params.prompt_logprobs is not None for s in batch.seqs):
                    self.last_prompt_logprobs = self._prompt_logprobs(hidden, batch)
                if not rows:  # prefill chunks that end before their sequence does
                    return []
                hidden = hidden[metadata.cu_seqlens_q[1:].long() - 1]
            logits = self.model.compute_logits(hidden)
        if batch.is_prefill:
            return self._sample_prefill(logits, rows, row_index)
        d = self._decode
        tensors = d.tensors
        if tensors is None or tensors.suppress_ids is not None:  # suppression (min_tokens) changes per step
            tensors = d.tensors = self._sampling_tensors(batch.seqs)
        capacity, vocab_size = self.tables.shape[0], logits.shape[1]
        views = []
        for token_rows, used in ((self.presence, tensors.do_penalty), (self.counts, tensors.do_output_penalty)):
            if used:
                views.append(token_rows.view(batch.seqs, capacity, vocab_size, self.device))
            else:
                views.append(None)
                token_rows.ok.clear()  # this step's tokens go unrecorded: the rows are out of date
        sampled = self.sampler(logits, tensors, views[0], output_counts=views[1])
        for token_rows, view in zip((self.presence, self.counts), views):
            if view is not None:
                token_rows.record(view, sampled)
        tensors.advance_()
        d.next_ids = sampled
        if d.confidence is not None:  # queued behind the draw; read every few steps only
            self.last_confidence = self.confidence.decode(batch.seqs, logits, *d.confidence)
        tokens = sampled.tolist()
        if d.num_logprobs is not None:
            self.last_logprobs = _logprobs(logits, sampled, batch.seqs, d.num_logprobs)
        return tokens

    @torch.inference_mode()
    def verify(self, batch: Batch) -> list[list[int]]:
        """A speculative step: `batch` is a prefill-shaped batch whose sequences end with their
        draft tokens (`chunk_ends[i] = len(seq)`, computing from the last accepted token on).
        Samples every position as plain decoding would sample that output token (penalties
        over the tokens before it, drafts included); returns each sequence's sampled tokens,
        one per computed position. `last_verify_logprobs` then holds, per sequence and
        position, what `last_logprobs` holds for a plain step (None if no row asked)."""
        for seq in batch.preempted:
            self.release(seq)
        self.last_logprobs = None
        self.copy_blocks(batch.block_copies)
        input_ids, positions, metadata = self._prepare_prefill(batch)
        logits = None
        if self.verify_graphs is not None:
            logits = self.verify_graphs.run(input_ids, positions, metadata)
        if logits is None:
            logits = self.model.compute_logits(self.model(input_ids, positions, self.kv_caches, metadata))
        rows, output_lens = [], []
        for seq, end in zip(batch.seqs, batch.chunk_ends):
            first = seq.num_computed + 1 - seq.prompt_len  # output index sampled at the first position
            rows += [seq] * (end - seq.num_computed)
            output_lens += range(first, first + end - seq.num_computed)
        tensors = SamplingTensors.from_params(
            [s.params for s in rows], output_lens=output_lens, keys=[s.noise_key for s in rows],
            eos_token_ids=self.config.eos_token_ids, device=self.device,
        )
        presence, counts = _draft_token_rows(batch, logits.shape[1], self.device, presence=tensors.do_penalty,
                                             counts=tensors.do_output_penalty)
        sampled_ids = self.sampler(logits, tensors, presence, output_counts=counts)
        sampled = sampled_ids.tolist()
        num_logprobs = _num_logprobs(rows)
        scores = None if num_logprobs is None else _logprobs(logits, sampled_ids, rows, num_logprobs)
        out, at = [], 0
        self.last_verify_logprobs = None if scores is None else []
        for seq, end in zip(batch.seqs, batch.chunk_ends):
            n = end - seq.num_computed
            out.append(sampled[at: at + n])
            if scores is not None:
                self.last_verify_logprobs.append(scores[at: at + n])
            at += n
        return out

    def _sample_prefill(self, logits: torch.Tensor, rows: list[Sequence], row_index: list[int]) -> list[int]:
        if row_index != list(range(logits.shape[0])):
            logits = logits[self._tensor(row_index, torch.int64)]
        tensors = self._sampling_tensors(rows)
        vocab_size = logits.shape[1]
        presence = _presence(rows, vocab_size, self.device) if tensors.do_penalty else None
        counts = _counts(rows, vocab_size, self.device) if tensors.do_output_penalty else None
        sampled = self.sampler(logits, tensors, presence, output_counts=counts)
        if any(s.params.tracks_confidence for s in rows):
            self.last_confidence = self.confidence.prefill(rows, logits)
        tokens = sampled.tolist()
        num_logprobs = _num_logprobs(rows)
        if num_logprobs is not None:
            self.last_logprobs = _logprobs(logits, sampled, rows, num_logprobs)
        return tokens

    def _prompt_logprobs(self, hidden: torch.Tensor, batch: Batch) -> list[tuple]:
        """Score the prompt tokens this prefill step computes, for the sequences that ask:
        the logits at position p give the log-probabilities of prompt token p + 1."""
        out, start = [], 0
        for seq, end in zip(batch.seqs, batch.chunk_ends):
            first, count = seq.num_computed, end - seq.num_computed
            k = seq.params.prompt_logprobs
            last = min(end, seq.prompt_len - 1)  # the last prompt token is scored from position prompt_len - 2
            if k is not None and last > first:
                rows = hidden[start: start + last - first]
                targets = self._tensor(seq.token_ids[first + 1: last + 1], torch.int64)
                scores = _scores(self.model.compute_logits(rows), targets, k)
                out.append((seq, first + 1, scores))
            start += count
        return out


def cascade_settings(device: torch.device, cascade_decode: bool | None,
                     min_shared_tokens: int | None) -> tuple[bool, int]:
    """(on, fewest shared tokens) for shared-prefix decode. `cascade_decode` None reads
    `FASTCOT_CASCADE_DECODE` (`auto`, `1`, `0`; default `auto`): auto is on where the decode
    kernels run compiled (CUDA) and the selected backend has a `cascade_decode_attention`
    kernel (`cuda` has none), off on CPU, where Triton only interprets (the `1` setting forces
    it anywhere, through the selected backend). `min_shared_tokens` None reads
    `FASTCOT_CASCADE_MIN_SHARED_TOKENS`, default CASCADE_MIN_SHARED_TOKENS."""
    if cascade_decode is None:
        mode = os.environ.get("FASTCOT_CASCADE_DECODE", "auto").strip().lower() or "auto"
        if mode not in ("auto", "1", "0"):
            raise ValueError(f"FASTCOT_CASCADE_DECODE must be auto, 1 or 0, got {mode!r}")
        cascade_decode = mode == "1" or (mode == "auto" and device.type == "cuda" and _has_cascade_kernel(device))
    elif not isinstance(cascade_decode, bool):
        raise TypeError(f"cascade_decode must be a bool or None, got {cascade_decode!r}")
    if min_shared_tokens is None:
        raw = os.environ.get("FASTCOT_CASCADE_MIN_SHARED_TOKENS", str(CASCADE_MIN_SHARED_TOKENS))
        if not raw.strip().isdigit():
            raise ValueError(f"FASTCOT_CASCADE_MIN_SHARED_TOKENS must be a non-negative integer, got {raw!r}")
        min_shared_tokens = int(raw)
    elif isinstance(min_shared_tokens, bool) or not isinstance(min_shared_tokens, int) or min_shared_tokens < 0:
        raise ValueError(f"cascade_min_shared_tokens must be a non-negative int, got {min_shared_tokens!r}")
    return cascade_decode, min_shared_tokens


def _has_cascade_kernel(device: torch.device) -> bool:
    from fastcot import ops

    try:
        ops.resolve("cascade_decode_attention", device)
    except ops.BackendError:
        return False
    return True


def _num_logprobs(rows: list[Sequence]) -> int | None:
    return max((s.params.logprobs for s in rows if s.params.logprobs is not None), default=None)


def _confidence(rows: list[Sequence]) -> tuple[int, int] | None:
    """(largest top-k, smallest read interval) of the rows tracking confidence, or None."""
    tracked = [s.params for s in rows if s.params.tracks_confidence]
    if not tracked:
        return None
    return max(p.confidence_top_k for p in tracked), min(p.confidence_interval for p in tracked)


def _scores(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int) -> list[tuple]:
    """Per row `(log-probability of token_ids[row], its rank, top ids, top log-probabilities)`
    under the raw distribution (one host copy for the batch)."""
    token_lp, rank, top_ids, top_lp = compute_logprobs(logits, token_ids, num_top, ranks=True)
    return list(zip(token_lp.tolist(), rank.tolist(), top_ids.tolist(), top_lp.tolist()))


def _logprobs(logits, sampled, rows, num_top) -> list[tuple | None]:
    """Each row's scores (see `_scores`), its own `params.logprobs` top entries; None where
    the row's request did not ask."""
    scores = _scores(logits, sampled, num_top)
    out = []
    for seq, (lp, rank, ids, lps) in zip(rows, scores):
        n = seq.params.logprobs
        out.append(None if n is None else (lp, rank, ids[:n], lps[:n]))
    return out


def _put(target: torch.Tensor, index: list[int], values: list[int], device, dtype=torch.int32) -> None:
    """`target[index] = values` for a 1-D int32 (or int64) `target` (one small copy, one kernel)."""
    code = "i" if dtype == torch.int32 else "q"
    target.index_copy_(0, pack("q", index, torch.int64, device), pack(code, values, dtype, device))
