"""Per-sequence output state: stop rules, incremental text, the thinking section of reasoning
models, and the text deltas handed out while a sequence runs.

Work per generated token is constant in the output length: the text is kept as pieces
(joined once, when the sequence finishes), and stop strings are looked for only when new text
contains the last character of one, in a window as long as the new text plus the longest
stop string.

Text coordinates: the *full text* is every piece of decoded output text so far, thinking
delimiters removed; `reasoning` is the character span of the thinking section in it. The
final `text` / `reasoning_text` of a sequence are the full text up to its end (a stop string
cuts it), split by that span. Deltas (`take_delta`) hand out the full text in order, each
character once, never a character that a stop string could still remove: while a sequence
runs, the longest tail of its text that is a proper prefix of a stop string is held back (it
is released as soon as the text moves on, and at the end), so streamed text always adds up to
the final text.
"""

from __future__ import annotations

import functools
from collections import deque

from fastcot.engine.detokenizer import IncrementalDetokenizer
from fastcot.engine.sequence import Sequence
from fastcot.reasoning import RepetitionGuard, ThinkingState, prompt_opens_thinking


class _Thinking:
    """One sequence's thinking section: the token-level state, and the budget rules that
    replace sampled tokens (`SamplingParams.thinking_budget`, `min_thinking_tokens`)."""

    def __init__(self, seq: Sequence, delimiters, tokenizer):
        p = seq.params
        self.end_id = delimiters.end_ids[0]
        self.state = ThinkingState(delimiters, starts_in_reasoning=prompt_opens_thinking(seq.token_ids, delimiters))
        self.budget = p.effective_thinking_budget  # thinking_budget, or reasoning_effort's
        self.min_tokens = p.min_thinking_tokens
        self.controls = self.budget is not None or self.min_tokens > 0
        encode = functools.partial(tokenizer.encode, add_special_tokens=False)
        self.lead_in = list(encode(p.answer_lead_in)) if self.budget is not None and p.answer_lead_in else []
        self.continuation = list(encode(p.thinking_continuation)) if self.min_tokens else []

    def choose(self, sampled: int, forced: deque) -> int:
        """The token to emit instead of `sampled` (queuing any that must follow in `forced`)."""
        state = self.state
        if not state.in_reasoning:
            return sampled
        n = state.num_reasoning_tokens
        if sampled == self.end_id:
            if n < self.min_tokens:  # too early: keep thinking
                forced.extend(self.continuation[1:])
                return self.continuation[0]
            return sampled
        if self.budget is not None and n >= self.budget:
            forced.extend(self.lead_in)
            return self.end_id
        return sampled


class SequenceOutput:
    """Stop checks, incremental text and deltas of one sequence.

    `observe(token)` for each emitted token (after `choose` when `controls`); the sequence is
    finished (`seq.finish`) when a stop condition holds, with its final `text`,
    `reasoning_text` and counts set. With `streaming`, `take_delta()` returns the new text
    since its last call as `(reasoning, answer)` strings.

    For reasoning models it also tracks the thinking section (its delimiter tokens' text is
    dropped; `reasoning` holds the character span of the thinking text) and applies the
    thinking-budget rules through `choose`, which replaces sampled tokens."""

    def __init__(self, seq: Sequence, tokenizer, eos_token_ids, max_model_len: int, thinking=None, *,
                 streaming: bool = False):
        p = seq.params
        self.seq = seq
        self.min_tokens = p.min_tokens
        self.stop_ids = set(p.stop_token_ids or []) | (set() if p.ignore_eos else set(eos_token_ids))
        self.stop_strings = list(p.stop or [])
        self.stop_last_chars = frozenset(s[-1] for s in self.stop_strings)
        self.stop_first_chars = frozenset(s[0] for s in self.stop_strings)
        self.longest = max(map(len, self.stop_strings), default=0)
        self.include_stop = p.include_stop_str_in_output
        # The sequence reaches its length limit at this many tokens (prompt included).
        self.end = max_model_len if p.max_tokens is None else min(seq.prompt_len + p.max_tokens, max_model_len)
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=p.skip_special_tokens)
        self.pieces: list[str] = []
        self.length = 0  # characters of full text so far
        self.text_end: int | None = None  # where the final text ends (set when finished)
        self.thinking = None if thinking is None else _Thinking(seq, thinking, tokenizer)
        self.forced: deque[int] = deque()  # tokens to emit in the next steps, whatever is sampled
        self.guard = RepetitionGuard() if p.repetition_guard else None
        # Whether `choose` must see every sampled token.
        self.controls = self.thinking is not None and self.thinking.controls
        self.reasoning = [0, None] if self.thinking is not None and self.thinking.state.in_reasoning else None
        self.kind = "reasoning" if self.reasoning else "answer"  # of the text being emitted
        # Streaming: the full text not handed out yet (held back or new), and where it starts.
        self.unsent: str | None = "" if streaming else None
        self.sent = 0

    def choose(self, sampled: int) -> int:
        """The token this sequence emits for the `sampled` one (thinking-budget rules)."""
        if self.forced:
            return self.forced.popleft()
        return self.thinking.choose(sampled, self.forced)

    def observe(self, token: int) -> str:
        """Account for a newly emitted token (already appended to the sequence); returns the
        text it adds. Finishes the sequence when a stop condition holds (the stop token or
        string is not part of the text unless `include_stop_str_in_output`)."""
        seq = self.seq
        n = len(seq.token_ids) - seq.prompt_len  # output tokens, this one included
        if token in self.stop_ids and n >= self.min_tokens:
            if self.include_stop:
                self._add_text(self.detok.add(token) or "")
            self._finish("stop", token)
            return ""
        delta = self.detok.add(token) or ""
        if self.thinking is not None and self._delimiter(token):
            delta = ""  # a delimiter's own text is in neither the reasoning nor the answer
        if delta:
            self.pieces.append(delta)
            self.length += len(delta)
            if self.unsent is not None:
                self.unsent += delta
            if n >= self.min_tokens and not self.stop_last_chars.isdisjoint(delta):
                stopped = self._stop_string(delta)
                if stopped is not None:
                    return stopped
        if self.guard is not None and self.guard.observe(token):
            self._finish("repetition")
        elif len(seq.token_ids) >= self.end:
            self._finish("length")
        return delta

    def _add_text(self, delta: str) -> None:
        if delta:
            self.pieces.append(delta)
            self.length += len(delta)
            if self.unsent is not None:
                self.unsent += delta

    def _delimiter(self, token: int) -> bool:
        """Feed the thinking state; True if `token` is a delimiter (its span boundary recorded)."""
        state = self.thinking.state
        was, before = state.in_reasoning, state.num_delimiter_tokens
        state.observe(token)
        if state.num_delimiter_tokens == before:
            return False
        if state.in_reasoning and not was:
            self.reasoning = [self.length, None]
        elif was and not state.in_reasoning:
            self.reasoning[1] = self.length
            self.controls = bool(self.forced)
        self.kind = "reasoning" if state.in_reasoning else "answer"
        return True

    def _stop_string(self, delta: str) -> str | None:
        """If `delta` completes a stop string, finish before the earliest such string (after
        it with `include_stop_str_in_output`) and return the part of `delta` kept; otherwise None."""
        size = len(delta) + self.longest - 1
        window, i = "", len(self.pieces)
        while len(window) < size and i:
            i -= 1
            window = self.pieces[i][len(window) - size:] + window
        new = len(window) - len(delta)  # where delta starts in the window
        hits = [(at, s) for s in self.stop_strings if (at := window.find(s, max(0, new - len(s) + 1))) != -1]
        if not hits:
            return None
        at, stop = min(hits)
        end = self.length - len(window) + at + (len(stop) if self.include_stop else 0)  # in the full text
        self._finish("stop", stop, text_end=end)
        return delta[: max(0, end - (self.length - len(delta)))]

    def finish(self, reason: str, stop_reason=None) -> None:
        """End the sequence from outside (abort, error) with the text so far."""
        self._finish(reason, stop_reason)

    def _finish(self, reason: str, stop_reason=None, text_end: int | None = None) -> None:
        self.text_end = self.length if text_end is None else text_end
        text = "".join(self.pieces)[: self.text_end]
        seq = self.seq
        if self.reasoning is not None:
            start, end = self.reasoning
            end = len(text) if end is None else min(end, len(text))
            seq.reasoning_text, text = text[start:end], text[:start] + text[end:]
        if self.thinking is not None:
            seq.num_reasoning_tokens = self.thinking.state.num_reasoning_tokens
            seq.num_delimiter_tokens = self.thinking.state.num_delimiter_tokens
        seq.text = text
        seq.finish(reason, stop_reason)

    # ---- streaming ------------------------------------------------------------------------

    def take_delta(self) -> tuple[str, str]:
        """The `(reasoning, answer)` text since the last call that no stop string can remove
        any more (everything up to the end once the sequence has finished). Streaming only."""
        unsent = self.unsent
        if not unsent:
            return "", ""
        if self.text_end is not None:
            count = max(0, self.text_end - self.sent)
        elif self.stop_strings and not self.include_stop and not self.stop_first_chars.isdisjoint(unsent):
            count = len(unsent) - _stop_prefix_length(unsent, self.stop_strings)
        else:
            count = len(unsent)
        if count == len(unsent) and self.reasoning is None:  # the common case
            self.unsent = ""
            self.sent += count
            return "", unsent
        if count <= 0:
            return "", ""
        start = self.sent
        out, self.unsent = unsent[:count], unsent[count:]
        self.sent = start + count
        if self.reasoning is None:
            return "", out
        r_start, r_end = self.reasoning
        lo = min(max(r_start - start, 0), count)
        hi = count if r_end is None else min(max(r_end - start, lo), count)
        return out[lo:hi], out[:lo] + out[hi:]


def _stop_prefix_length(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `stops` (text a
    stop string could still claim). One `find` per stop string in the common case."""
    best = 0
    for stop in stops:
        first, size = stop[0], min(len(stop) - 1, len(text))
        at = text.find(first, len(text) - size)
        while at != -1 and len(text) - at > best:
            if stop.startswith(text[at:]):
                best = len(text) - at
                break
            at = text.find(first, at + 1)
    return best
