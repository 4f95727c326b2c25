"""Thinking sections of reasoning models: delimiters, splitting text and counting tokens.

Open reasoning models (DeepSeek-R1, QwQ, Qwen3, ...) write `<think> reasoning </think> answer`;
many chat templates already open `<think>` at the end of the prompt, so the completion starts
inside the reasoning. Ordinary instruct models can be asked to reason with a chain-of-thought
system prompt (`COT_SYSTEM_PROMPT`) and their answer split off its "Final answer:" line.

One thinking section per completion: the first end delimiter closes it for good, and whatever
follows (delimiter strings included) is answer. Before it, delimiters are dropped from both
texts, a start delimiter switches to reasoning, and text before any delimiter is answer unless
the completion `starts_in_reasoning`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from fastcot.reasoning.answers import FINAL_ANSWER_MARKER

# reasoning_effort -> thinking-token budget: the values discussed for vLLM's thinking budget
# (vllm PR #20859). The one table `SamplingParams(reasoning_effort=...)`, the CLI's
# --reasoning-effort and the server's `reasoning_effort` read.
REASONING_EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 8192}


def effort_budget(effort: str, max_tokens: int | None = None) -> int:
    """The thinking budget of a reasoning effort ("low", "medium", "high"), lowered to
    `max_tokens` (a budget above it could never bind)."""
    if not isinstance(effort, str) or effort not in REASONING_EFFORT_BUDGETS:
        raise ValueError(f"reasoning_effort must be one of {list(REASONING_EFFORT_BUDGETS)}, got {effort!r}")
    budget = REASONING_EFFORT_BUDGETS[effort]
    return budget if max_tokens is None else min(budget, max_tokens)


# Pairs known from open reasoning models, most common first.
KNOWN_DELIMITERS = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
)


@dataclass
class ThinkingDelimiters:
    """The strings that open and close a model's thinking section, and their token ids.

    `start_ids` / `end_ids` are `tokenizer.encode(start/end, add_special_tokens=False)`:
    usually one (added) token each, possibly several.
    """

    start: str
    end: str
    start_ids: list[int]
    end_ids: list[int]

    def __post_init__(self):
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        if self.start == self.end:
            raise ValueError(f"start and end must differ, both are {self.start!r}")
        for name in ("start_ids", "end_ids"):
            ids = getattr(self, name)
            try:
                ids = [operator.index(t) for t in ids]
            except TypeError:
                raise TypeError(f"{name} must be a list of ints (token ids), got {ids!r}") from None
            if not ids:
                raise ValueError(f"{name} must hold at least one token id, got []")
            setattr(self, name, ids)
        if self.start_ids == self.end_ids:
            raise ValueError(f"start_ids and end_ids must differ, both are {self.start_ids}")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def find_thinking_delimiters(tokenizer, start: str | None = None, end: str | None = None) -> ThinkingDelimiters | None:
    """The thinking delimiters of a (transformers) tokenizer, or None when it has none.

    With `start` and `end` given (both or neither), those strings are used as they are.
    Otherwise the first pair of `KNOWN_DELIMITERS` whose two strings are each a token of the
    vocabulary (`get_vocab()`, added tokens included) and, when the tokenizer has a chat
    template, at least one of which the template mentions (a vocabulary can carry unused
    reasoning tokens). Either way the strings are encoded with `add_special_tokens=False`.
    """
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode method, got {type(tokenizer).__name__}")
    if (start is None) != (end is None):
        raise ValueError(f"give both start and end or neither, got start={start!r}, end={end!r}")
    if start is not None:
        return ThinkingDelimiters(start, end, _encode(tokenizer, start), _encode(tokenizer, end))
    vocab = tokenizer.get_vocab() if callable(getattr(tokenizer, "get_vocab", None)) else {}
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        template = "\n".join(t for t in template.values() if isinstance(t, str))
    for pair in KNOWN_DELIMITERS:
        if not all(s in vocab for s in pair):
            continue
        if isinstance(template, str) and template and not any(s in template for s in pair):
            continue
        return ThinkingDelimiters(pair[0], pair[1], _encode(tokenizer, pair[0]), _encode(tokenizer, pair[1]))
    return None


def _last_index(ids: Sequence[int], pattern: list[int]) -> int:
    n, first = len(pattern), pattern[0]
    for i in range(len(ids) - n, -1, -1):
        if ids[i] == first and list(ids[i:i + n]) == pattern:
            return i
    return -1


def prompt_opens_thinking(prompt_ids: Sequence[int], delimiters: ThinkingDelimiters) -> bool:
    """True when the prompt leaves a thinking section open (its last start delimiter comes
    after its last end delimiter), as templates that end the generation prompt with `<think>`
    do: pass it as `starts_in_reasoning`. Once per request: scans back from the end, at worst
    O(len(prompt_ids)) (times the delimiter length on repeated partial matches)."""
    start = _last_index(prompt_ids, delimiters.start_ids)
    return start >= 0 and start > _last_index(prompt_ids, delimiters.end_ids)


class ReasoningSplitter:
    """Splits streamed completion text into reasoning and answer pieces.

    `feed(delta)` returns `[(kind, text), ...]`, kind "reasoning" or "answer", in order, with
    neighbours of the same kind merged and no empty texts; delimiters are in neither (see the
    module docstring for the rules). A delimiter may arrive split across deltas: text that
    could be the start of one is held back (fewer characters than the longest delimiter)
    until the next delta decides; `finish()` flushes it at the end of the stream. Work per
    `feed` is O(len(delta) + delimiter length).

    Example:
        >>> d = ThinkingDelimiters("<think>", "</think>", [1], [2])
        >>> s = ReasoningSplitter(d, starts_in_reasoning=True)
        >>> s.feed("2+2 is 4</thi"), s.feed("nk>\\n\\n4"), s.finish()
        ([('reasoning', '2+2 is 4')], [('answer', '\\n\\n4')], [])
    """

    def __init__(self, delimiters: ThinkingDelimiters, *, starts_in_reasoning: bool):
        if not isinstance(delimiters, ThinkingDelimiters):
            raise TypeError(f"delimiters must be ThinkingDelimiters, got {type(delimiters).__name__}")
        self.delimiters = delimiters
        self.in_reasoning = bool(starts_in_reasoning)
        self.ended = False
        self._held = ""

    def feed(self, delta: str) -> list[tuple[str, str]]:
        """Split the next piece of completion text."""
        if not isinstance(delta, str):
            raise TypeError(f"delta must be a str, got {type(delta).__name__}")
        pieces: list[tuple[str, str]] = []
        text, self._held = self._held + delta, ""
        while not self.ended:
            found = self._next_delimiter(text)
            if found is None:
                keep = self._possible_delimiter_prefix(text)
                text, self._held = text[:len(text) - keep], text[len(text) - keep:]
                break
            at, delimiter = found
            self._emit(pieces, text[:at])
            text = text[at + len(delimiter):]
            if delimiter == self.delimiters.end:
                self.in_reasoning, self.ended = False, True
            else:
                self.in_reasoning = True
        self._emit(pieces, text)
        return pieces

    def finish(self) -> list[tuple[str, str]]:
        """Flush the held-back text at the end of the stream."""
        pieces: list[tuple[str, str]] = []
        self._emit(pieces, self._held)
        self._held = ""
        return pieces

    def _next_delimiter(self, text: str) -> tuple[int, str] | None:
        best = None
        for delimiter in (self.delimiters.start, self.delimiters.end):
            at = text.find(delimiter)
            if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(delimiter) > len(best[1]))):
                best = (at, delimiter)
        return best

    def _possible_delimiter_prefix(self, text: str) -> int:
        """The length of the longest tail of `text` that is a proper prefix of a delimiter."""
        longest = 0
        for delimiter in (self.delimiters.start, self.delimiters.end):
            for size in range(min(len(delimiter) - 1, len(text)), longest, -1):
                if text.endswith(delimiter[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, pieces: list[tuple[str, str]], text: str) -> None:
        if not text:
            return
        kind = "reasoning" if self.in_reasoning else "answer"
        if pieces and pieces[-1][0] == kind:
            pieces[-1] = (kind, pieces[-1][1] + text)
        else:
            pieces.append((kind, text))


class _SequenceMatcher:
    """Online exact matching of one token pattern (Knuth-Morris-Pratt): `step` is O(1)
    amortized and says whether the pattern ends at the token just seen."""

    def __init__(self, pattern: list[int]):
        self.pattern = pattern
        self.failure = [0] * len(pattern)  # longest proper border of pattern[:i + 1]
        k = 0
        for i in range(1, len(pattern)):
            while k and pattern[i] != pattern[k]:
                k = self.failure[k - 1]
            if pattern[i] == pattern[k]:
                k += 1
            self.failure[i] = k
        self.matched = 0

    def step(self, token: int) -> bool:
        pattern, k = self.pattern, self.matched
        while k and token != pattern[k]:
            k = self.failure[k - 1]
        if token == pattern[k]:
            k += 1
        if k == len(pattern):
            self.matched = self.failure[k - 1]
            return True
        self.matched = k
        return False


class ThinkingState:
    """Token-level thinking-section tracking for one completion, for exact budgets.

    `observe(token_id)` for every completion token, in order (prompt tokens excluded). Same
    rules as `ReasoningSplitter` (module docstring) on token ids: delimiter tokens are counted
    in neither `num_reasoning_tokens` nor `num_answer_tokens`; with a multi-token delimiter,
    the tokens of a partial match count as the current kind until the match completes, when
    they are taken back. O(1) amortized per token.

    Attributes:
        in_reasoning: the next token would be reasoning.
        ended: the end delimiter was seen (the thinking section is over for good).
        num_reasoning_tokens, num_answer_tokens, num_delimiter_tokens: counts so far.
    """

    def __init__(self, delimiters: ThinkingDelimiters, *, starts_in_reasoning: bool):
        if not isinstance(delimiters, ThinkingDelimiters):
            raise TypeError(f"delimiters must be ThinkingDelimiters, got {type(delimiters).__name__}")
        self.delimiters = delimiters
        self.in_reasoning = bool(starts_in_reasoning)
        self.ended = False
        self.num_reasoning_tokens = 0
        self.num_answer_tokens = 0
        self.num_delimiter_tokens = 0
        self._start = _SequenceMatcher(delimiters.start_ids)
        self._end = _SequenceMatcher(delimiters.end_ids)

    def observe(self, token_id: int) -> None:
        """Take the next completion token."""
        try:
            token_id = operator.index(token_id)
        except TypeError:
            raise TypeError(f"token_id must be an int, got {type(token_id).__name__}") from None
        if self.ended:
            self.num_answer_tokens += 1
            return
        # Count first; a completed delimiter then takes its earlier tokens back from the kind
        # they were counted as (all the same kind: a kind only changes at a delimiter).
        if self.in_reasoning:
            self.num_reasoning_tokens += 1
        else:
            self.num_answer_tokens += 1
        end_done = self._end.step(token_id)
        start_done = self._start.step(token_id)
        if start_done and end_done:  # one ends the other: the longer began first
            start_done = len(self.delimiters.start_ids) > len(self.delimiters.end_ids)
            end_done = not start_done
        if end_done:
            self._take_back(len(self.delimiters.end_ids))
            self.in_reasoning, self.ended = False, True
        elif start_done:
            self._take_back(len(self.delimiters.start_ids))
            self.in_reasoning = True
            # A delimiter's tokens belong to it alone: no match may continue across it.
            self._start.matched = self._end.matched = 0

    def _take_back(self, size: int) -> None:
        if self.in_reasoning:
            self.num_reasoning_tokens -= size
        else:
            self.num_answer_tokens -= size
        self.num_delimiter_tokens += size


COT_SYSTEM_PROMPT = (
    "You are a careful problem solver. Think through the problem step by step before answering: "
    "restate what is asked, work out each step explicitly, and check your work (recompute key "
    "steps, test the result against the conditions of the problem, and fix any mistake you find). "
    "When you are confident, end your response with a last line of the form\n"
    "Final answer: <answer>\n"
    "giving only the answer on that line, with nothing after it."
)


def split_cot_answer(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a completion written under `COT_SYSTEM_PROMPT`.

    Splits at the last "Final answer:" marker (case-insensitive, markdown bold allowed:
    "**Final Answer:**"); both parts are stripped of surrounding whitespace. Without a
    marker the whole text is reasoning and the answer is "".
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    matches = list(FINAL_ANSWER_MARKER.finditer(text))
    if not matches:
        return text.strip(), ""
    marker = matches[-1]
    return text[:marker.start()].strip(), text[marker.end():].strip()
