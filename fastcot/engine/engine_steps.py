"""The body of `LLMEngine.step`: one scheduled batch run, its tokens emitted, finished and
failed requests ended, and the outputs of the requests that progressed. A base class of
`LLMEngine`, whose constructor sets the state it works on (`scheduler`, `runner`,
`block_manager`, `requests`, `_outs`, `speculator`, counters)."""

from __future__ import annotations

import logging

from fastcot.engine.request import Request
from fastcot.engine.scheduler import Batch
from fastcot.engine.sequence import RequestOutput, Sequence, Status

logger = logging.getLogger("fastcot")


class EngineSteps:
    """`LLMEngine`'s step loop (see `LLMEngine.step` for what it returns)."""

    def _step(self) -> list[RequestOutput]:
        touched: dict[str, None] = {}  # ids of requests with an output this step, in order
        batch, failed = self.scheduler.schedule()
        for seq in failed:
            request = self.requests[seq.request_id]
            self._end(request, "error", seq.stop_reason)
            touched[request.request_id] = None
        if batch is None and not self.scheduler.running and not self.scheduler.waiting:
            self._end_stranded(touched)
        if batch is not None:
            if batch.is_prefill:
                self._prefill_step(batch, touched)
            else:
                drafts = self._drafts(batch) if self.speculator is not None else None
                if drafts is not None:
                    self._speculative_step(batch, drafts, touched)
                else:
                    tokens = self.runner.step(batch, batch.seqs, None)
                    for seq in batch.seqs:
                        seq.num_computed += 1  # the token it fed in is now in the cache
                    self._emit(batch.seqs, tokens, touched)
        requests = self.requests
        return [self._output(requests[rid]) for rid in touched if rid in requests]

    def _prefill_step(self, batch: Batch, touched: dict) -> None:
        rows, row_index = self._prefill_rows(batch)
        tokens = self.runner.step(batch, rows, row_index)
        self._after_prefill(batch)
        if self.runner.last_prompt_logprobs:
            for seq, first, scores in self.runner.last_prompt_logprobs:
                entries = self.requests[seq.request_id].prompt_logprobs
                targets = seq.token_ids[first: first + len(scores)]
                for i, (target, score) in enumerate(zip(targets, scores)):
                    entries[first + i] = self.logprob_entry(target, score)
        for seq in rows:
            request = self.requests[seq.request_id]
            if request.mark_first_token():
                self.num_prompt_tokens += len(request.prompt_token_ids)
                request.num_cached_tokens = request.seqs[0].num_cached
        self._emit(rows, tokens, touched)

    def _prefill_rows(self, batch: Batch) -> tuple[list[Sequence], list[int]]:
        """The sequences a prefill step samples for (those whose prompt it completes, and the
        other samples of their requests) and the batch row whose logits each one uses."""
        rows, row_index = [], []
        for i, (seq, end) in enumerate(zip(batch.seqs, batch.chunk_ends)):
            if end < len(seq):
                continue  # a prefill chunk short of the sequence's end: nothing to sample yet
            rows.append(seq)
            row_index.append(i)
            if seq.num_output == 0:
                pending = self.requests[seq.request_id].pending
                rows.extend(pending)
                row_index.extend([i] * len(pending))
        return rows, row_index

    def _after_prefill(self, batch: Batch) -> None:
        """Mark the prefilled tokens computed and cached; fork the other samples of requests
        whose prompt is complete (they share its blocks)."""
        for seq, end in zip(batch.seqs, batch.chunk_ends):
            seq.num_computed = end
            self.block_manager.cache_computed(seq, end)
            if end == len(seq) and seq.num_output == 0:
                request = self.requests[seq.request_id]
                for child in request.pending:
                    child.token_ids = seq.token_ids[:]
                    self.block_manager.fork(seq, child)
                    child.num_computed = len(child)
                    child.status = Status.RUNNING
                    self.scheduler.running.append(child)
                request.pending = []

    def _emit(self, rows: list[Sequence], tokens: list[int], touched: dict) -> None:
        """Append each row's token (after the thinking-budget rules), run its stop checks,
        and finish what stops."""
        if self.runner.last_logprobs is not None:
            for seq, token, score in zip(rows, tokens, self.runner.last_logprobs):
                if score is not None:
                    seq.logprobs.append(self.logprob_entry(token, score))
                    seq.cumulative_logprob += score[0]
        outs, finished = self._outs, Status.FINISHED
        confidence = self.runner.last_confidence
        replaced = []
        for i, (seq, token) in enumerate(zip(rows, tokens)):
            if seq.status is finished:
                continue  # ended by the failure of another sample of its request, earlier in this loop
            out = outs[seq.seq_id]
            try:
                if out.controls and (chosen := out.choose(token)) != token:
                    token = chosen
                    replaced.append((i, token))
                seq.token_ids.append(token)
                out.observe(token)
            except Exception as exc:  # noqa: BLE001 - the request's own failure ends it alone
                self._fail(seq, exc, touched)
                continue
            if confidence is not None and confidence[i] is not None:
                seq.confidence = confidence[i]
                if confidence[i].stop_index is not None and seq.status is not finished:
                    out.finish("low_confidence", confidence[i].stop_index)  # below the request's threshold
            if seq.status is finished:
                self._seq_finished(self.requests[seq.request_id], seq)
                touched[seq.request_id] = None
            elif out.unsent is not None:  # a request that reports every step
                touched[seq.request_id] = None
        self.num_generation_tokens += len(rows)
        if replaced:
            self.runner.replace_sampled(rows, replaced)

    def _fail(self, seq: Sequence, exc: Exception, touched: dict) -> None:
        request = self.requests[seq.request_id]
        logger.warning("request %s failed: %s: %s", request.request_id, type(exc).__name__, exc)
        self._end(request, "error", f"{type(exc).__name__}: {exc}")
        touched[request.request_id] = None

    def _drafts(self, batch: Batch) -> list[list[int]] | None:
        """Draft tokens per sequence of a decode batch, or None to decode it plainly (a large
        batch, or nothing to propose). Rows under thinking-budget controls get none."""
        seqs = batch.seqs
        if len(seqs) > self.speculator.config.max_batch_size:
            return None
        if any(s.params.tracks_confidence for s in seqs):
            return None  # one confidence per emitted token: the device state advances by one per step
        drafts = []
        for seq in seqs:
            out = self._outs[seq.seq_id]
            # Room for drafts before the length limit, past the token this step samples anyway.
            limit = 0 if out.controls else out.end - len(seq.token_ids) - 1
            drafts.append(self.speculator.propose(seq, limit))
        return drafts if any(drafts) else None

    def _speculative_step(self, batch: Batch, drafts: list[list[int]], touched: dict) -> None:
        """Score every sequence's drafts in one forward pass and emit the accepted tokens."""
        blocks = self.block_manager
        copies = list(batch.block_copies)
        for seq, draft in zip(batch.seqs, drafts):
            if not draft:
                continue
            seq.token_ids.extend(draft)
            if blocks.can_append(seq, len(draft)):
                copies += blocks.append_slots(seq, len(draft))
            else:  # no room for the drafts: this sequence decodes one token
                del seq.token_ids[-len(draft):]
                draft.clear()
        verify = Batch(batch.seqs, is_prefill=True, chunk_ends=[len(s) for s in batch.seqs], block_copies=copies,
                       preempted=batch.preempted)
        sampled = self.runner.verify(verify)
        scores = self.runner.last_verify_logprobs
        self.speculator.num_steps += 1
        for i, (seq, draft, samples) in enumerate(zip(batch.seqs, drafts, sampled)):
            if draft:
                del seq.token_ids[-len(draft):]
            tokens = self.speculator.accept(draft, samples)
            out = self._outs[seq.seq_id]
            for j, token in enumerate(tokens):
                if scores is not None and (score := scores[i][j]) is not None:  # of the sampled token, as `_emit`
                    seq.logprobs.append(self.logprob_entry(token, score))
                    seq.cumulative_logprob += score[0]
                try:
                    if out.controls:
                        token = out.choose(token)  # only rows without drafts have controls
                    seq.num_computed += 1
                    seq.token_ids.append(token)
                    out.observe(token)
                except Exception as exc:  # noqa: BLE001 - the request's own failure ends it alone
                    self._fail(seq, exc, touched)
                    break
                self.num_generation_tokens += 1
                if seq.status is Status.FINISHED:
                    self._seq_finished(self.requests[seq.request_id], seq)
                    touched[seq.request_id] = None
                    break
            else:
                blocks.truncate(seq)  # the blocks taken for rejected drafts
                if out.unsent is not None:
                    touched[seq.request_id] = None

    # ---- ending requests -------------------------------------------------------------------

    def _seq_finished(self, request: Request, seq: Sequence) -> None:
        """Release a finished sample's blocks, slot and state."""
        self.scheduler.finish(seq)
        self.runner.release(seq)
        if self.speculator is not None:
            self.speculator.forget(seq)
        request.num_unfinished -= 1
        self.num_reasoning_tokens += seq.num_reasoning_tokens
        self.finish_reasons[seq.finish_reason] += 1

    def _end(self, request: Request, reason: str, message=None) -> None:
        """Finish every unfinished sample of `request` with `reason` (abort, error)."""
        pending = request.pending
        for seq, out in zip(request.seqs, request.outs):
            if seq.status is Status.FINISHED and out.text_end is not None:
                continue
            if seq in pending:
                seq.status = Status.FINISHED  # never started: nothing to release
            else:
                self.scheduler.abort(seq)
            out.finish(reason, message)
            self._seq_finished(request, seq)
        request.pending = []

    def _end_stranded(self, touched: dict) -> None:
        """Unfinished requests with nothing left to schedule can never progress (a defect):
        end them with an error instead of letting callers step forever."""
        for request in list(self.requests.values()):
            if not request.finished:
                logger.error("request %s has unfinished samples that nothing schedules; ending it",
                             request.request_id)
                self._end(request, "error", "internal error: the request's samples were never scheduled")
                touched[request.request_id] = None

    def _output(self, request: Request) -> RequestOutput:
        """The request's output for this step; a finished request is forgotten."""
        output = request.output()
        if request.finished:
            del self.requests[request.request_id]
            for seq in request.seqs:
                self._outs.pop(seq.seq_id, None)
        return output

    def _drop_all(self) -> None:
        """After a step failed midway, when no sequence's state can be trusted: drop every
        request and return every block (the prefix cache included) and slot."""
        self.num_failed_steps += 1
        for request in self.requests.values():
            for seq in request.seqs:
                if seq.status is not Status.FINISHED:
                    seq.finish("abort")
        self.requests.clear()
        self._outs.clear()
        self.scheduler.clear()
        self.block_manager.reset()
        self.runner.reset()
        if self.speculator is not None:
            self.speculator.indexes.clear()
