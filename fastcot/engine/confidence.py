"""Path confidence on the device (DeepConf): per sequence, its token confidences' sliding
window, the group confidence, its lowest value over full windows, and the output length at
which a full window first fell below the request's threshold.

State lives in `[capacity]` tensors, one row per model-runner slot (the rows move with the
slots), updated in place after each draw with no host synchronization (`update`). The host
reads a batch's rows only every `confidence_interval` decode steps, after a prefill draw, and
when a sequence leaves its slot (`read`, `release`). A sequence sampled outside a slot (its
first token, drawn by the prefill step, or a preempted sequence) keeps its row in `stash`
until it gets a slot again.

Definitions and the host-side use are in `fastcot.reasoning.confidence`.
"""

from __future__ import annotations

import torch

from fastcot.engine.sampling import token_confidence
from fastcot.engine.sequence import Sequence, Status
from fastcot.reasoning.confidence import PathConfidence

_INF = float("inf")
# name -> (dtype, initial value); `ring` [rows, width] holds the last `window` token confidences.
_SCALARS = {
    "count": (torch.int64, 0),  # tokens scored
    "total": (torch.float64, 0.0),  # sum of all token confidences
    "group": (torch.float32, 0.0),  # mean of the last min(count, window)
    "lowest": (torch.float32, _INF),  # lowest group confidence over full windows
    "stop_at": (torch.int64, -1),  # count when a full window first fell below threshold
    "window": (torch.int64, 1),
    "top_k": (torch.int64, 1),
    "threshold": (torch.float32, -_INF),
}


class ConfidenceRows:
    """The confidence state of every slot of a `ModelRunner` (made at first use)."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity, self.device = capacity, device
        self.state: dict[str, torch.Tensor] | None = None
        self.ok: set[int] = set()  # seq_ids whose slot row is their current state
        self.stash: dict[int, dict[str, torch.Tensor]] = {}  # seq_id -> its one-row state
        self.steps = 0  # decode steps that tracked confidence, for the read interval

    # ---- rows -------------------------------------------------------------------------------

    def _fresh(self, seq: Sequence, vocab_size: int, width: int) -> dict[str, torch.Tensor]:
        p = seq.params
        values = dict(window=p.confidence_window or 1, top_k=min(p.confidence_top_k, vocab_size),
                      threshold=-_INF if p.confidence_threshold is None else p.confidence_threshold)
        row = {name: torch.full((1,), values.get(name, init), dtype=dtype, device=self.device)
               for name, (dtype, init) in _SCALARS.items()}
        row["ring"] = torch.zeros((1, width), dtype=torch.float32, device=self.device)
        return row

    def _width(self, seqs) -> int:
        return max((s.params.confidence_window or 1 for s in seqs), default=1)

    def _ensure(self, width: int) -> None:
        if self.state is None:
            self.state = {name: torch.full((self.capacity,), init, dtype=dtype, device=self.device)
                          for name, (dtype, init) in _SCALARS.items()}
            self.state["ring"] = torch.zeros((self.capacity, width), dtype=torch.float32, device=self.device)
        ring = self.state["ring"]
        if ring.shape[1] < width:
            self.state["ring"] = torch.cat([ring, ring.new_zeros((ring.shape[0], width - ring.shape[1]))], dim=1)

    @staticmethod
    def _fit(row: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        ring = row["ring"]
        if ring.shape[1] < width:
            row = dict(row, ring=torch.cat([ring, ring.new_zeros((1, width - ring.shape[1]))], dim=1))
        return row

    def view(self, seqs: list[Sequence], vocab_size: int) -> dict[str, torch.Tensor]:
        """The `[B]` rows of a decode batch (its sequences hold slots 0..B-1), each sequence's
        own state (from the stash, or fresh) written in the first time it shows up."""
        self._ensure(self._width(seqs))
        state = self.state
        width = state["ring"].shape[1]
        for i, seq in enumerate(seqs):
            if seq.seq_id in self.ok:
                continue
            row = self.stash.pop(seq.seq_id, None)
            row = self._fresh(seq, vocab_size, width) if row is None else self._fit(row, width)
            for name, value in row.items():
                state[name][i] = value[0, : width] if name == "ring" else value[0]
            self.ok.add(seq.seq_id)
        return {name: t[: len(seqs)] for name, t in state.items()}

    def grow(self) -> None:
        self.capacity *= 2
        if self.state is not None:
            self.state = {name: torch.cat([t, torch.full_like(t, _SCALARS[name][1]) if name in _SCALARS
                                           else torch.zeros_like(t)]) for name, t in self.state.items()}

    def permute(self, index: torch.Tensor) -> None:
        if self.state is not None:
            n = index.shape[0]
            for t in self.state.values():
                t[:n] = t[index]

    def reset(self) -> None:
        self.ok.clear()
        self.stash.clear()

    # ---- steps ------------------------------------------------------------------------------

    @staticmethod
    def update(state: dict[str, torch.Tensor], logits: torch.Tensor, max_k: int) -> None:
        """Score this step's distribution of every row and move its window on, in place on
        the device (`logits` `[B, V]` raw, rows matching `state`; `max_k` a host int >= every
        row's top-k)."""
        max_k = min(max_k, logits.shape[1])
        conf = token_confidence(logits, state["top_k"], max_k)
        count, window = state["count"], state["window"]
        state["ring"].scatter_(1, (count % window).unsqueeze(1), conf.unsqueeze(1))
        count.add_(1)
        state["total"].add_(conf.double())
        group = state["ring"].sum(dim=1) / torch.minimum(count, window).to(torch.float32)
        state["group"].copy_(group)
        full = count >= window
        state["lowest"].copy_(torch.where(full, torch.minimum(state["lowest"], group), state["lowest"]))
        crossed = full & (group < state["threshold"]) & (state["stop_at"] < 0)
        state["stop_at"].copy_(torch.where(crossed, count, state["stop_at"]))

    def decode(self, seqs: list[Sequence], logits: torch.Tensor, max_k: int,
               interval: int) -> list[PathConfidence] | None:
        """Update a decode batch's rows; every `interval` calls, read them (one host copy)."""
        state = self.view(seqs, logits.shape[1])
        self.update(state, logits, max_k)
        self.steps += 1
        if self.steps % interval:
            return None
        return [c if s.params.tracks_confidence else None for s, c in zip(seqs, read(state))]

    def prefill(self, rows: list[Sequence], logits: torch.Tensor) -> list[PathConfidence | None]:
        """Update the stashed state of the tracked `rows` (drawn by a prefill step, `logits`
        `[len(rows), V]`) and read it."""
        tracked = [i for i, s in enumerate(rows) if s.params.tracks_confidence]
        width = self._width(rows[i] for i in tracked)
        vocab_size = logits.shape[1]
        parts = [self.stash.pop(rows[i].seq_id, None) for i in tracked]
        parts = [self._fresh(rows[i], vocab_size, width) if row is None else row for i, row in zip(tracked, parts)]
        width = max(width, *(row["ring"].shape[1] for row in parts))
        parts = [self._fit(row, width) for row in parts]
        state = {name: torch.cat([row[name] for row in parts]) for name in parts[0]}
        index = torch.tensor(tracked, dtype=torch.int64, device=logits.device)
        max_k = max(rows[i].params.confidence_top_k for i in tracked)
        self.update(state, logits.index_select(0, index), max_k)
        for j, i in enumerate(tracked):
            self.stash[rows[i].seq_id] = {name: t[j: j + 1].clone() for name, t in state.items()}
        out: list[PathConfidence | None] = [None] * len(rows)
        for i, conf in zip(tracked, read(state)):
            out[i] = conf
        return out

    def release(self, seq: Sequence, slot: int | None) -> None:
        """`seq` leaves its slot: a finished sequence gets its final `confidence`; a preempted
        one keeps its state in the stash until it runs again."""
        if not seq.params.tracks_confidence:
            self.ok.discard(seq.seq_id)
            return
        row = None
        if seq.seq_id in self.ok and slot is not None and self.state is not None:
            row = {name: t[slot: slot + 1].clone() for name, t in self.state.items()}
        self.ok.discard(seq.seq_id)
        if row is None:
            row = self.stash.get(seq.seq_id)
        if seq.status is Status.FINISHED:
            self.stash.pop(seq.seq_id, None)
            if row is not None:
                seq.confidence = read(row)[0]
        elif row is not None:
            self.stash[seq.seq_id] = row


def read(state: dict[str, torch.Tensor]) -> list[PathConfidence]:
    """The host's view of `state`'s rows (one device-to-host copy)."""
    names = ("count", "total", "group", "lowest", "stop_at", "window")
    columns = torch.stack([state[n].to(torch.float64) for n in names]).tolist()
    out = []
    for count, total, group, lowest, stop_at, window in zip(*columns):
        count = int(count)
        out.append(PathConfidence(
            num_tokens=count, mean=total / count if count else 0.0, group=group,
            lowest=lowest if count >= window else group, stop_index=int(stop_at) if stop_at >= 0 else None))
    return out
