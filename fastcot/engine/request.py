"""The engine's state of one request, and the `RequestOutput`s it hands out."""

from __future__ import annotations

import time

from fastcot.engine.output_processor import SequenceOutput
from fastcot.engine.sequence import CompletionOutput, RequestMetrics, RequestOutput, Sequence, Status


class Request:
    """One request: its `n` samples (`seqs`), their output states (`outs`), and what its
    outputs have handed out so far.

    Only `seqs[0]` is prefilled; the others wait in `pending` until its prompt is in the
    cache, then fork from it (sharing its blocks) and draw their first token from the same
    prefill step.
    """

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params,
                 seqs: list[Sequence], outs: list[SequenceOutput], arrival_time: float):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.seqs = seqs
        self.outs = outs
        self.pending = seqs[1:]
        self.kind = params.output_kind
        self.streams = self.kind != "final_only"  # an output at every step it progresses
        self.num_unfinished = len(seqs)
        self.arrival_time = arrival_time
        self.first_token_time: float | None = None
        self.num_cached_tokens: int | None = None
        self.prompt_logprobs: list | None = None if params.prompt_logprobs is None else [None] * len(prompt_token_ids)
        prompt_len = len(prompt_token_ids)
        self._sent_tokens = [prompt_len] * len(seqs)  # token_ids handed out, per sample
        self._sent_logprobs = [0] * len(seqs)
        self._reported = [False] * len(seqs)  # its finish has been handed out
        self._final_ids: list[list[int] | None] = [None] * len(seqs)  # a finished sample's token ids, made once

    @property
    def finished(self) -> bool:
        return self.num_unfinished == 0

    def output(self) -> RequestOutput:
        """The output for this step: every sample with its deltas since the previous output."""
        finished = self.num_unfinished == 0
        if self.kind == "final_only":
            outputs = [self._final(i, seq) for i, seq in enumerate(self.seqs)]
        else:
            outputs = [self._completion(i, seq, out) for i, (seq, out) in enumerate(zip(self.seqs, self.outs))]
        metrics = self._metrics() if finished else None
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, outputs, metrics, finished,
                             self.prompt_logprobs, self.num_cached_tokens or 0)

    def _completion(self, i: int, seq: Sequence, out: SequenceOutput) -> CompletionOutput:
        """A sample with its deltas (a server's every step: kept to plain attribute work)."""
        done = seq.status is Status.FINISHED
        first_finish = done and not self._reported[i]
        self._reported[i] = done
        end = len(seq.token_ids)
        delta_ids = seq.token_ids[self._sent_tokens[i]:end].tolist()
        self._sent_tokens[i] = end
        delta_lp = None
        if seq.logprobs is not None:
            delta_lp = seq.logprobs[self._sent_logprobs[i]:]
            self._sent_logprobs[i] = len(seq.logprobs)
        reasoning, answer = out.take_delta()
        if done:
            text, token_ids, reasoning_text, logprobs = seq.text, None, seq.reasoning_text, seq.logprobs
            counts = seq.num_reasoning_tokens, seq.num_delimiter_tokens
            snapshot = None
        else:
            text = token_ids = reasoning_text = logprobs = None
            state = None if out.thinking is None else out.thinking.state
            counts = (0, 0) if state is None else (state.num_reasoning_tokens, state.num_delimiter_tokens)
            snapshot = _Snapshot(seq, out)
        if self.kind == "delta":
            text, token_ids, reasoning_text, logprobs, snapshot = answer, delta_ids, reasoning, delta_lp, None
        elif done:
            token_ids = self._final_ids[i]
            if token_ids is None:
                token_ids = self._final_ids[i] = seq.output_token_ids
        return CompletionOutput.make(seq.index, text, token_ids, seq.finish_reason, seq.stop_reason, logprobs,
                                     reasoning_text, counts[0], counts[1], seq.cumulative_logprob, answer,
                                     reasoning, delta_ids, delta_lp, first_finish, snapshot,
                                     seq.confidence if done else None)

    def _final(self, i: int, seq: Sequence) -> CompletionOutput:
        """A sample of a "final_only" request: whole when finished, empty before."""
        if seq.status is not Status.FINISHED:
            return CompletionOutput(seq.index, "", [], None)
        first_finish = not self._reported[i]
        self._reported[i] = True
        return CompletionOutput(seq.index, seq.text, seq.output_token_ids, seq.finish_reason, seq.stop_reason,
                                seq.logprobs, seq.reasoning_text, seq.num_reasoning_tokens, seq.num_delimiter_tokens,
                                seq.cumulative_logprob, finished_this_step=first_finish, confidence=seq.confidence)

    def _metrics(self) -> RequestMetrics:
        seqs = self.seqs
        first = self.first_token_time
        last = max((s.finish_time for s in seqs if s.finish_time), default=None)
        decoded = sum(max(0, s.num_output - 1) for s in seqs)
        rate = decoded / (last - first) if first and last and last > first else None
        return RequestMetrics(self.arrival_time, first, last, None if first is None else first - self.arrival_time,
                              rate)

    def mark_first_token(self) -> bool:
        """Record the time of the request's first token; True the first time."""
        if self.first_token_time is not None:
            return False
        self.first_token_time = time.perf_counter()
        return True


class _Snapshot:
    """The cumulative fields of a running sample as of one step, computed when first read.
    Text and tokens only grow after a step, so a later read still sees that step's prefix."""

    __slots__ = ("seq", "out", "num_tokens", "num_logprobs", "text_end", "reasoning")

    def __init__(self, seq: Sequence, out: SequenceOutput):
        self.seq, self.out = seq, out
        self.num_tokens = len(seq.token_ids)
        self.num_logprobs = None if seq.logprobs is None else len(seq.logprobs)
        self.text_end = out.sent  # handed out: not text a stop string may still remove
        self.reasoning = None if out.reasoning is None else tuple(out.reasoning)

    def __call__(self):
        seq, out = self.seq, self.out
        full = "".join(out.pieces)[: self.text_end]
        reasoning = ""
        if self.reasoning is not None:
            start, end = self.reasoning
            end = len(full) if end is None else min(end, len(full))
            reasoning, full = full[start:end], full[:start] + full[end:]
        token_ids = seq.token_ids[seq.prompt_len: self.num_tokens].tolist()
        logprobs = None if self.num_logprobs is None else seq.logprobs[: self.num_logprobs]
        return full, token_ids, reasoning, logprobs
