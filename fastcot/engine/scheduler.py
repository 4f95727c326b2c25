"""Continuous batching: admit waiting sequences for prefill, else decode every running one.

Each step is either a prefill step (new sequences, whole prompts, under a token budget) or a
decode step (one token for every running sequence). When the cache cannot hold the next
decode token of every running sequence, the newest ones are preempted: their blocks are
freed and they wait to be recomputed (their prefix blocks often survive in the prefix cache).
A sequence that can never fit the cache finishes at once with `finish_reason="error"`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastcot.engine.block_manager import BlockManager
from fastcot.engine.sequence import Sequence, Status


@dataclass
class Batch:
    seqs: list[Sequence]
    is_prefill: bool
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) copy-on-write


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[Batch | None, list[Sequence]]:
        """The next step's batch (None if nothing can run) and sequences that failed to fit."""
        failed = []
        batch = self._schedule_prefill(failed)
        if batch is None and self.running:
            batch = self._schedule_decode()
        return batch, failed

    def _schedule_prefill(self, failed: list[Sequence]) -> Batch | None:
        seqs, budget = [], self.max_num_batched_tokens
        while self.waiting and len(self.running) + len(seqs) < self.max_num_seqs:
            seq = self.waiting[0]
            needed = self.blocks.num_blocks_needed(len(seq))
            if needed > self.blocks.num_blocks:
                self.waiting.popleft()
                seq.finish("error", f"needs {needed} KV blocks but the cache has {self.blocks.num_blocks}")
                failed.append(seq)
                continue
            # Whole prompts for now: the first one is admitted even past the budget.
            if seqs and len(seq) > budget or not self.blocks.can_allocate(seq):
                break
            seq.num_computed = self.blocks.allocate(seq)
            budget -= len(seq) - seq.num_computed
            seq.status = Status.RUNNING
            self.waiting.popleft()
            seqs.append(seq)
        if not seqs:
            return None
        self.running.extend(seqs)
        return Batch(seqs, is_prefill=True)

    def _schedule_decode(self) -> Batch | None:
        scheduled, copies = [], []
        queue = list(self.running)  # oldest first
        while queue:
            seq = queue.pop(0)
            while not self.blocks.can_append(seq):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                pair = self.blocks.append_slot(seq)
                if pair is not None:
                    copies.append(pair)
                scheduled.append(seq)
        self.running = scheduled
        return Batch(scheduled, is_prefill=False, block_copies=copies) if scheduled else None

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Release a finished running sequence's blocks."""
        self.blocks.free(seq)
        if seq in self.running:
            self.running.remove(seq)
