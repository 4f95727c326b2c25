"""Continuous batching with chunked prefill, interleaved with decode.

Each step is either a prefill step or a decode step. A prefill step takes up to
`max_num_batched_tokens` prompt tokens: first the next chunks of sequences already being
prefilled, then new sequences (whose prompts may be split over several steps). A decode
step runs one token for every sequence whose cache is complete up to its last token. While
sequences are decoding, prefill and decode steps alternate, so long prompts never stall
running generations for more than one step.

When the cache cannot hold the next decode token, the newest sequences are preempted: their
blocks are freed and they wait to be recomputed (their prefix blocks often survive in the
prefix cache). A sequence that can never fit the cache finishes at once with
`finish_reason="error"`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastcot.engine.block_manager import BlockManager
from fastcot.engine.sequence import Sequence, Status


@dataclass
class Batch:
    """One step: `seqs` compute their tokens `[num_computed, chunk_ends[i])` (decode: the last one)."""

    seqs: list[Sequence]
    is_prefill: bool
    chunk_ends: list[int] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) copy-on-write
    # Decode: the sequences whose block table changed for this step (a new last block, or a
    # copy-on-write of it); every other table is as it was at its previous step.
    grown: list[Sequence] = field(default_factory=list)
    # Sequences preempted while scheduling this step: their blocks are gone.
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.prefilling: list[Sequence] = []  # running sequences whose prompt is not all computed
        self.num_preemptions = 0
        self._last_was_prefill = False
        self._preempted: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[Batch | None, list[Sequence]]:
        """The next step's batch (None if nothing can run) and sequences that failed to fit."""
        failed: list[Sequence] = []
        batch = None
        # Running sequences are either mid-prefill or decode-ready (see `_decode_ready`).
        self.prefilling = [s for s in self.prefilling if s.status == Status.RUNNING and not _decode_ready(s)]
        any_decode = len(self.running) > len(self.prefilling)
        if not (self._last_was_prefill and any_decode):
            batch = self._schedule_prefill(failed)
        if batch is None and any_decode:
            batch = self._schedule_decode()
        if batch is None and not self._last_was_prefill:
            batch = self._schedule_prefill(failed)
        self._last_was_prefill = batch is not None and batch.is_prefill
        if batch is not None:
            batch.preempted, self._preempted = self._preempted, []
        return batch, failed

    def _schedule_prefill(self, failed: list[Sequence]) -> Batch | None:
        seqs, ends, budget = [], [], self.max_num_batched_tokens
        for seq in self.prefilling:  # oldest first: their next chunks
            if budget == 0:
                break
            chunk = min(len(seq) - seq.num_computed, budget)
            seqs.append(seq)
            ends.append(seq.num_computed + chunk)
            budget -= chunk
        admitted = []
        while self.waiting and budget > 0 and len(self.running) + len(admitted) < self.max_num_seqs:
            seq = self.waiting[0]
            needed = self.blocks.num_blocks_needed(len(seq))
            if needed > self.blocks.num_blocks:
                self.waiting.popleft()
                seq.finish("error", f"needs {needed} KV blocks but the cache has {self.blocks.num_blocks}")
                failed.append(seq)
                continue
            use_cache = seq.params.prompt_logprobs is None  # scoring a prompt computes all of it
            if not self.blocks.can_allocate(seq, use_prefix_cache=use_cache):
                break
            seq.num_computed = self.blocks.allocate(seq, use_prefix_cache=use_cache)
            if seq.num_cached is None:
                seq.num_cached = seq.num_computed
            chunk = min(len(seq) - seq.num_computed, budget)
            seq.status = Status.RUNNING
            self.waiting.popleft()
            admitted.append(seq)
            seqs.append(seq)
            ends.append(seq.num_computed + chunk)
            budget -= chunk
        self.running.extend(admitted)
        self.prefilling.extend(admitted)
        return Batch(seqs, is_prefill=True, chunk_ends=ends) if seqs else None

    def _schedule_decode(self) -> Batch | None:
        # Oldest first; without sequences mid-prefill every running sequence is ready.
        ready = [s for s in self.running if _decode_ready(s)] if self.prefilling else list(self.running)
        needing = self.blocks.needing_room(ready)
        if not needing:  # the common step: every new token goes into its own last block
            return Batch(ready, is_prefill=False) if ready else None
        needing = set(needing)
        scheduled, copies, grown = [], [], []
        for seq in ready:
            if seq.status != Status.RUNNING:
                continue  # preempted for an older sequence in this loop
            if seq not in needing:
                scheduled.append(seq)
                continue
            while not self.blocks.can_append(seq):
                victims = [s for s in reversed(self.running) if s is not seq and s not in scheduled]
                victim = victims[0] if victims else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                pair = self.blocks.append_slot(seq)
                if pair is not None:
                    copies.append(pair)
                scheduled.append(seq)
                grown.append(seq)
        if not scheduled:
            return None
        return Batch(scheduled, is_prefill=False, block_copies=copies, grown=grown)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        if seq in self.prefilling:
            self.prefilling.remove(seq)
        self.blocks.free(seq)
        self._preempted.append(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def clear(self) -> None:
        """Forget every sequence (after a failed engine step; their blocks are reset too)."""
        self.waiting.clear()
        self.running.clear()
        self.prefilling.clear()
        self._preempted.clear()
        self._last_was_prefill = False

    def abort(self, seq: Sequence) -> None:
        """Drop a waiting or running sequence (its blocks released); the caller finishes it."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.finish(seq)

    def finish(self, seq: Sequence) -> None:
        """Release a finished running sequence's blocks."""
        self.blocks.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.prefilling:
            self.prefilling.remove(seq)


def _decode_ready(seq: Sequence) -> bool:
    """Its cache holds everything but its newest sampled token: one decode step computes that.

    A prompt is never finished by a decode step, even when a prefill chunk (or a prefix hit)
    stops one token short of its end: the prefill step that computes a prompt's last token is
    the one that samples the first token of every sample of the request (`n > 1` forks)."""
    return seq.num_computed == len(seq) - 1 and len(seq) > seq.prompt_len
