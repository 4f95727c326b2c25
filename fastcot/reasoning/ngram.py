"""Prompt-lookup draft proposals: the latest earlier occurrence of the sequence's last n-gram.

N-gram speculative decoding (prompt lookup) drafts the next tokens by finding where the last
few tokens of a sequence (prompt + generated so far) occurred before and copying what followed
them. Long chain-of-thought text repeats itself a lot, so the drafts are often accepted.

`NgramIndex` keeps, for every n-gram of the sequence (`min_n <= n <= max_n`), the end of its
latest occurrence that has a continuation, updated as tokens arrive and undone when rejected
speculative tokens are rolled back. Work per token is O(max_n * (max_n - min_n + 1)) (building
the keys), independent of the sequence length. `propose_from` is the brute-force reference.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

# Undo-log entry for a key that had no earlier occurrence (positions are >= 1).
_ABSENT = 0


def _check_n_range(min_n, max_n) -> None:
    for name, value in (("min_n", min_n), ("max_n", max_n)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if min_n < 1:
        raise ValueError(f"min_n must be >= 1, got {min_n}")
    if max_n < min_n:
        raise ValueError(f"max_n must be >= min_n ({min_n}), got {max_n}")


def _check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


def _token_list(name: str, token_ids: Iterable[int]) -> list[int]:
    try:
        return [operator.index(t) for t in token_ids]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of ints (token ids)") from None


def propose_from(token_ids: Sequence[int], k: int, min_n: int = 2, max_n: int = 4) -> list[int]:
    """Reference prompt-lookup proposal by brute-force scan (O(len * max_n); for tests).

    For n from `max_n` down to `min_n`: the last n tokens are the suffix; the latest start
    j < len - n with `token_ids[j:j+n] == suffix` (earlier occurrences may overlap the suffix)
    gives the draft `token_ids[j+n : j+n+k]`. Returns [] when no n matches or `k == 0`.
    """
    _check_n_range(min_n, max_n)
    _check_k(k)
    tokens = list(token_ids)
    length = len(tokens)
    if k == 0:
        return []
    for n in range(max_n, min_n - 1, -1):
        if n >= length:
            continue
        suffix = tokens[length - n:]
        for j in range(length - n - 1, -1, -1):
            if tokens[j:j + n] == suffix:
                return tokens[j + n:j + n + k]
    return []


class NgramIndex:
    """Incremental prompt-lookup index over one sequence's token ids.

    Args:
        token_ids: the initial tokens (usually the prompt).
        min_n, max_n: the n-gram sizes matched, longest first (1 <= min_n <= max_n).

    `propose(k)` equals `propose_from(tokens, k, min_n, max_n)` at all times, including after
    `rollback`. Invariant: `_latest[n-gram]` is the end (exclusive) of the n-gram's latest
    occurrence that is followed by at least one token, i.e. ends before `len(self)`; the
    suffix n-grams are registered only when the next token arrives. `_undo` holds, per
    registration in order, the value it replaced, so `rollback` restores the table exactly.

    Example:
        >>> index = NgramIndex([1, 2, 3, 4, 1, 2])
        >>> index.propose(2)
        [3, 4]
        >>> index.extend([3]); index.propose(3)
        [4, 1, 2]
    """

    def __init__(self, token_ids: Iterable[int] = (), *, min_n: int = 2, max_n: int = 4):
        _check_n_range(min_n, max_n)
        self.min_n = min_n
        self.max_n = max_n
        self._tokens: list[int] = []
        self._latest: dict[tuple[int, ...], int] = {}
        self._undo: list[int] = []
        self.extend(token_ids)

    def __len__(self) -> int:
        return len(self._tokens)

    def _ngram_sizes(self, end: int) -> range:
        """The n whose n-gram ends (exclusive) at `end`, i.e. fits in `tokens[:end]`."""
        return range(self.min_n, min(self.max_n, end) + 1)

    def extend(self, new_ids: Iterable[int]) -> None:
        """Append tokens; O(len(new_ids)) work."""
        new_ids = _token_list("new_ids", new_ids)
        tokens, latest, undo = self._tokens, self._latest, self._undo
        for token in new_ids:
            end = len(tokens)  # the n-grams ending here get their continuation: `token`
            for n in self._ngram_sizes(end):
                key = tuple(tokens[end - n:end])
                undo.append(latest.get(key, _ABSENT))
                latest[key] = end
            tokens.append(token)

    def rollback(self, n: int) -> None:
        """Remove the last `n` tokens (rejected speculative tokens); O(n) work."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if not 0 <= n <= len(self._tokens):
            raise ValueError(f"n must be in [0, {len(self._tokens)}] (the tokens held), got {n}")
        tokens, latest, undo = self._tokens, self._latest, self._undo
        for _ in range(n):
            tokens.pop()
            end = len(tokens)
            for size in reversed(self._ngram_sizes(end)):
                key = tuple(tokens[end - size:end])
                previous = undo.pop()
                if previous == _ABSENT:
                    del latest[key]
                else:
                    latest[key] = previous

    def propose(self, k: int) -> list[int]:
        """Up to `k` draft tokens following the latest earlier occurrence of the longest
        matching suffix n-gram (see `propose_from`); [] when none. O(max_n^2 + k) work."""
        _check_k(k)
        if k == 0:
            return []
        tokens, latest = self._tokens, self._latest
        length = len(tokens)
        for n in range(min(self.max_n, length), self.min_n - 1, -1):
            end = latest.get(tuple(tokens[length - n:]))
            if end is not None:
                return tokens[end:end + k]
        return []
