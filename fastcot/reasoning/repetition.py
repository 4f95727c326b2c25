"""Degenerate-loop detection for long generations: the same span repeated back to back.

A model stuck in a loop emits one span of p tokens over and over ("Wait, let me check again.
Wait, let me check again. ..."). `RepetitionGuard` watches the token stream and says when the
tail of the sequence is such a loop, so the engine can end the sample (with its own
finish reason) instead of burning the rest of `max_tokens`.
"""

from __future__ import annotations

import math
import operator
from collections import deque


class RepetitionGuard:
    """Says when the tail of a token stream is a degenerate loop.

    A loop of period p (1 <= p <= `max_period`) is a tail of the sequence made of the same p
    tokens repeated at least `required_repeats(p) = max(repeats, ceil(min_tokens_in_loop / p))`
    times back to back, so every loop covers at least `min_tokens_in_loop` tokens: short spans
    need more repeats (a run of one token must be `min_tokens_in_loop` long), which keeps runs
    like `0, 0, 0` or a line of `=` from counting. Text that reuses phrases, even often, is
    not a loop unless the repeats are consecutive and identical for that long.

    Args:
        max_period: the longest span looked for (tokens). Loops of longer spans are missed.
        repeats: the fewest consecutive copies of the span (>= 2).
        min_tokens_in_loop: the fewest tokens a loop covers.

    Defaults (64, 8, 64): a sentence of 20 tokens must repeat 8 times (160 tokens), a 4-token
    phrase 16 times, a single token 64 times.

    `observe(token)` is level-triggered: it returns True for every token while the tail is a
    loop (first at the token that completes the required repeats), False again once the loop
    is broken. `loop_period` is the smallest period of the current loop (None when none).
    `reset()` forgets the history, e.g. for a new sequence.

    Cost: for each p a counter of how many consecutive latest positions i had
    `t[i] == t[i - p]`; the tail is p-periodic over `counter + p` tokens, a loop once
    `counter >= p * (required_repeats(p) - 1)`. Each token updates the `max_period` counters
    once (O(max_period), independent of the sequence length); state is O(max_period).
    """

    def __init__(self, *, max_period: int = 64, repeats: int = 8, min_tokens_in_loop: int = 64):
        for name, value, low in (("max_period", max_period, 1), ("repeats", repeats, 2),
                                 ("min_tokens_in_loop", min_tokens_in_loop, 1)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.max_period = max_period
        self.repeats = repeats
        self.min_tokens_in_loop = min_tokens_in_loop
        # _needed[p - 1]: the counter value at which a p-periodic tail is a loop.
        self._needed = [p * (self.required_repeats(p) - 1) for p in range(1, max_period + 1)]
        self.reset()

    def required_repeats(self, period: int) -> int:
        """The copies of a span of `period` tokens that make a loop."""
        return max(self.repeats, math.ceil(self.min_tokens_in_loop / period))

    def reset(self) -> None:
        """Forget all observed tokens."""
        # _recent[p - 1] is the token p positions back; _runs[p - 1] the counter for period p.
        self._recent: deque[int] = deque(maxlen=self.max_period)
        self._runs = [0] * self.max_period
        self.loop_period: int | None = None
        self.num_tokens = 0

    def observe(self, token: int) -> bool:
        """Take the next token; True while the tail of the stream is a loop."""
        try:
            token = operator.index(token)
        except TypeError:
            raise TypeError(f"token must be an int (a token id), got {type(token).__name__}") from None
        recent = self._recent
        # Periods reaching past the start see no token (zip stops early): their counters stay 0.
        runs = [run + 1 if earlier == token else 0 for run, earlier in zip(self._runs, recent)]
        runs.extend([0] * (self.max_period - len(runs)))
        self._runs = runs
        recent.appendleft(token)
        self.num_tokens += 1
        self.loop_period = None
        if any(map(operator.ge, runs, self._needed)):
            self.loop_period = next(p for p, (run, needed) in enumerate(zip(runs, self._needed), 1) if run >= needed)
        return self.loop_period is not None
