"""Suffix-decoding draft proposals (SuffixDecoding, Oliaro et al. 2024, arXiv 2411.04975).

A request's next tokens are drafted from the continuations of the longest earlier match of
its last tokens, in its own prompt and output and in a bounded cache of earlier requests'
outputs, ranked by how often each continuation followed the match. The draft grows along the
most frequent continuation while the estimated probability of the whole path (the product
of each step's `count(context + token) / count(context followed by anything)`) stays at or
above `min_token_prob`, and at most `floor(match_length * max_spec_factor + max_spec_offset)`
tokens long: a long match is strong evidence, a short one is not. The longest match and each
shorter suffix of it that occurs more often (one per state on the automaton's suffix-link
path) give candidates; the one with the largest score (the sum of its tokens' path
probabilities, the expected number of accepted tokens) wins, the longer on ties, and the
request's own candidate on ties with the cache's.

`SuffixAutomaton` is the index: an online suffix automaton (Blumer et al.) over one or more
token strings: O(1) amortized states and transitions per appended token, at most `2n`
states. Occurrence counts are kept for contexts of up to `max_depth + 1` tokens (SuffixDecoding
bounds its trees' depth the same way): each token adds one to the states of the text's
suffixes of those lengths, O(max_depth) in the worst case (a string of one repeated token),
usually far fewer. `propose_from` is the brute-force reference of a proposal.

`SuffixCache` holds finished requests' outputs in one automaton, least recently used first
out once they exceed `max_tokens` (a proposal from the cache marks the output where its
match first occurred as used). An evicted output leaves the automaton when it is rebuilt
from the live outputs, which happens as soon as evicted tokens outnumber live ones: memory
stays below twice `max_tokens`, and the rebuilds cost O(1) amortized per cached token.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class Draft:
    """A proposal: `tokens`, its `score` (sum of the tokens' path probabilities) and the
    length of the match it continues."""

    tokens: list[int]
    score: float = 0.0
    match_len: int = 0


def _check_params(max_depth, max_spec_factor, max_spec_offset, min_token_prob) -> None:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(f"max_depth must be an int >= 1, got {max_depth!r}")
    for name, value, ok, expected in (
        ("max_spec_factor", max_spec_factor, lambda v: v > 0, "> 0"),
        ("max_spec_offset", max_spec_offset, lambda v: True, "a finite number"),
        ("min_token_prob", min_token_prob, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name} must be {expected}, got {value!r}")


def _tokens(name: str, token_ids: Iterable[int]) -> list[int]:
    try:
        return [operator.index(t) for t in token_ids]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of ints (token ids)") from None


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")


def _budget(match_len: int, k: int, factor: float, offset: float) -> int:
    return max(0, min(k, int(match_len * factor + offset + 1e-9)))


class SuffixAutomaton:
    """Online suffix automaton over token strings (`start()` begins another string), with
    occurrence counts of the contexts of at most `max_depth + 1` tokens.

    State 0 is the root. Per state: `length` (its longest string), `link` (suffix link),
    `next` (transitions), `count` (end positions of its strings: valid for states holding a
    string of at most `max_depth + 1` tokens) and `owner` (the string that created it).
    """

    def __init__(self, max_depth: int = 24):
        _check_params(max_depth, 1.0, 0.0, 0.0)
        self.max_depth = max_depth
        self.length, self.link, self.next, self.count, self.owner = [0], [-1], [{}], [0], [-1]
        self.num_tokens = 0
        self.start()

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def num_states(self) -> int:
        return len(self.length)

    def start(self, owner: int = 0) -> None:
        """Begin a new string: the tokens appended next are not a continuation of the last."""
        self.last = 0
        self._tail, self._tail_len = 0, 0  # state and length of the string's suffix of min(D + 1, n) tokens
        self._owner = owner

    def _new(self, length: int, link: int, nxt: dict, count: int, owner: int) -> int:
        self.length.append(length)
        self.link.append(link)
        self.next.append(nxt)
        self.count.append(count)
        self.owner.append(owner)
        return len(self.length) - 1

    def _clone(self, p: int, q: int, token: int) -> int:
        """Split state q: its strings of at most `length[p] + 1` tokens move to a clone."""
        length, link, nxt = self.length, self.link, self.next
        clone = self._new(length[p] + 1, link[q], dict(nxt[q]), self.count[q], self.owner[q])
        link[q] = clone
        while p != -1 and nxt[p].get(token) == q:
            nxt[p][token] = clone
            p = link[p]
        return clone

    def append(self, token: int) -> None:
        """Append one token to the current string (O(1) amortized, plus the count updates)."""
        length, link, nxt = self.length, self.link, self.next
        p = self.last
        q = nxt[p].get(token)
        if q is not None:  # the extended string already occurs (another string of the set)
            cur = q if length[q] == length[p] + 1 else self._clone(p, q, token)
        else:
            cur = self._new(length[p] + 1, -1, {}, 0, self._owner)
            while p != -1 and token not in nxt[p]:
                nxt[p][token] = cur
                p = link[p]
            if p == -1:
                link[cur] = 0
            else:
                q = nxt[p][token]
                link[cur] = q if length[q] == length[p] + 1 else self._clone(p, q, token)
        self.last = cur
        self.num_tokens += 1
        # The suffix of min(D + 1, n) tokens moves on by the token (a window of D + 1).
        window = self.max_depth + 1
        tail, tail_len = nxt[self._tail][token], self._tail_len + 1
        tail_len = min(tail_len, window)
        while length[link[tail]] >= tail_len:  # the window dropped a token, or a split moved it
            tail = link[tail]
        self._tail, self._tail_len = tail, tail_len
        count, state = self.count, tail
        while state > 0:  # every state holding a suffix of at most D + 1 tokens ends here once more
            count[state] += 1
            state = link[state]

    def extend(self, token_ids: Iterable[int]) -> None:
        for token in _tokens("token_ids", token_ids):
            self.append(token)

    def shorten(self, state: int, ell: int) -> tuple[int, int]:
        """The state holding the last `min(ell, max_depth)` tokens of a string held by `state`."""
        ell = min(ell, self.max_depth)
        length, link = self.length, self.link
        while state > 0 and length[link[state]] >= ell:
            state = link[state]
        return state, ell

    def walk(self, state: int, ell: int, token: int) -> tuple[int, int]:
        """Matching statistics: from the state of a text's longest suffix found here (`ell`
        tokens, at most `max_depth`), the same after the text gains `token`."""
        length, link, nxt = self.length, self.link, self.next
        while state > 0 and ell <= length[link[state]]:  # a split since: the string moved to the clone
            state = link[state]
        while state > 0 and token not in nxt[state]:
            state = link[state]
            ell = length[state]
        target = nxt[state].get(token)
        if target is None:
            return 0, 0
        return self.shorten(target, ell + 1)

    def path(self, state: int, ell: int, budget: int, min_token_prob: float) -> tuple[list[int], float]:
        """The most frequent continuation of the context (`state`, `ell` tokens, at most
        `max_depth`): up to `budget` tokens while the path probability stays >= `min_token_prob`.
        Returns (tokens, score); ties go to the smaller token id."""
        nxt, count, length, link, depth = self.next, self.count, self.length, self.link, self.max_depth
        tokens, score, prob = [], 0.0, 1.0
        while len(tokens) < budget:
            total, best, best_count, best_state = 0, -1, 0, -1
            for token, child in nxt[state].items():
                c = count[child]
                total += c
                if c > best_count or (c == best_count and c and token < best):
                    best, best_count, best_state = token, c, child
            if not best_count:
                break
            prob *= best_count / total
            if prob < min_token_prob:
                break
            tokens.append(best)
            score += prob
            state, ell = best_state, ell + 1
            if ell > depth:
                ell = depth
                if length[link[state]] >= depth:
                    state = link[state]
        return tokens, score

    def best(self, state: int, ell: int, match_len: int, k: int, *, max_spec_factor: float,
             max_spec_offset: float, min_token_prob: float) -> Draft:
        """The best draft over the context and each shorter one along the suffix links
        (`match_len` sets the budget of the longest; the others use their own length)."""
        best = Draft([])
        length, link = self.length, self.link
        while state > 0:
            budget = _budget(match_len, k, max_spec_factor, max_spec_offset)
            if budget:
                tokens, score = self.path(state, ell, budget, min_token_prob)
                if score > best.score:
                    best = Draft(tokens, score, match_len)
            state = link[state]
            ell = match_len = length[state]
        return best


class SuffixIndex:
    """One request's automaton over its prompt and output (append-only; `len` = tokens held)."""

    def __init__(self, token_ids: Iterable[int] = (), *, max_depth: int = 24):
        self.automaton = SuffixAutomaton(max_depth)
        self.tokens: list[int] = []
        self.global_state = self.global_len = 0  # match in the cache (see SuffixCache.walk)
        self.generation = -1  # the cache's generation that match is for
        self.extend(token_ids)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, token_ids: Iterable[int], cache: SuffixCache | None = None) -> None:
        new = _tokens("token_ids", token_ids)
        self.automaton.extend(new)
        self.tokens += new
        if cache is not None:
            self._follow(cache, new)

    def _follow(self, cache: SuffixCache, new: list[int]) -> None:
        if self.generation != cache.generation:  # the cache changed: match the last tokens again
            self.generation = cache.generation
            self.global_state = self.global_len = 0
            new = self.tokens[-cache.automaton.max_depth:]
        state, ell, walk = self.global_state, self.global_len, cache.automaton.walk
        for token in new:
            state, ell = walk(state, ell, token)
        self.global_state, self.global_len = state, ell

    def propose(self, k: int, *, max_spec_factor: float = 1.0, max_spec_offset: float = 0.0,
                min_token_prob: float = 0.1, cache: SuffixCache | None = None) -> Draft:
        """The best draft of at most `k` tokens from this request's tokens and the cache."""
        _check_k(k)
        _check_params(self.automaton.max_depth, max_spec_factor, max_spec_offset, min_token_prob)
        a = self.automaton
        best = Draft([])
        if k <= 0 or not self.tokens:
            return best
        options = {"max_spec_factor": max_spec_factor, "max_spec_offset": max_spec_offset,
                   "min_token_prob": min_token_prob}
        match_len = a.length[a.link[a.last]]  # the longest suffix that also ends earlier
        if match_len:
            depth = a.max_depth
            if match_len < depth:
                state, ell = a.link[a.last], match_len
            else:  # the window's suffix of D + 1 tokens, shortened to D
                state, ell = a.shorten(a._tail, depth)
            best = a.best(state, ell, match_len, k, **options)
        if cache is not None and cache.num_live_tokens and self.generation == cache.generation and self.global_len:
            other = cache.automaton.best(self.global_state, self.global_len, self.global_len, k, **options)
            if other.score > best.score:
                best = other
                cache.touch(self.global_state)
        return best


class SuffixCache:
    """Finished requests' outputs for drafting, at most `max_tokens` tokens live (LRU)."""

    def __init__(self, max_tokens: int = 65536, *, max_depth: int = 24):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
        _check_params(max_depth, 1.0, 0.0, 0.0)
        self.max_tokens, self.max_depth = max_tokens, max_depth
        self.entries: OrderedDict[int, list[int]] = OrderedDict()  # id -> tokens, least recently used first
        self.evicted: list[list[int]] = []  # evicted outputs still in the automaton (until a rebuild)
        self.num_live_tokens = self.num_dead_tokens = 0
        self.generation = 0  # bumped at each change: indexes match their last tokens again
        self._next_id = 1
        self.automaton = SuffixAutomaton(max_depth)

    def add(self, token_ids: Sequence[int]) -> None:
        """Cache one finished output (its last `max_tokens` tokens), evicting the least
        recently used ones beyond `max_tokens`."""
        tokens = _tokens("token_ids", token_ids)[-self.max_tokens:] if self.max_tokens else []
        if not tokens:
            return
        entry = self._next_id
        self._next_id += 1
        self.entries[entry] = tokens
        self.num_live_tokens += len(tokens)
        self.automaton.start(entry)
        self.automaton.extend(tokens)
        while self.num_live_tokens > self.max_tokens:
            _, old = self.entries.popitem(last=False)
            self.evicted.append(old)
            self.num_live_tokens -= len(old)
            self.num_dead_tokens += len(old)
        if self.num_dead_tokens > self.num_live_tokens:
            self._rebuild()
        self.generation += 1

    def _rebuild(self) -> None:
        self.automaton = SuffixAutomaton(self.max_depth)
        for entry, tokens in self.entries.items():
            self.automaton.start(entry)
            self.automaton.extend(tokens)
        self.num_dead_tokens = 0
        self.evicted = []

    def touch(self, state: int) -> None:
        """Mark the output that created `state` as recently used."""
        owner = self.automaton.owner[state]
        if owner in self.entries:
            self.entries.move_to_end(owner)

    def clear(self) -> None:
        self.entries.clear()
        self.num_live_tokens = 0
        self._rebuild()
        self.generation += 1


def propose_from(token_ids: Sequence[int], k: int, *, cached: Sequence[Sequence[int]] = (), max_depth: int = 24,
                 max_spec_factor: float = 1.0, max_spec_offset: float = 0.0, min_token_prob: float = 0.1) -> Draft:
    """Reference proposal by brute-force counting (O(len * max_depth * k); for tests).

    For each context length m from 1 up: the last m tokens of `token_ids`, counted where
    they occur earlier in `token_ids` (a separate search in `cached`, the cache's outputs)
    followed by a token; the draft follows the most frequent next token (ties: smaller id)
    while the product of its relative frequencies stays >= `min_token_prob`, at most
    `floor(m' * max_spec_factor + max_spec_offset)` and `k` tokens, where m' is the longest
    match for the candidate whose context is the longest match found within `max_depth`
    tokens (its true length may exceed it), else m. Contexts of one automaton state (the same
    occurrences) are one candidate, scored with the longest of them. The contexts grow with
    each drafted token and keep their last `max_depth` tokens. Best score wins; the
    request's own candidates beat the cache's on ties, longer contexts beat shorter ones.
    """
    _check_k(k)
    _check_params(max_depth, max_spec_factor, max_spec_offset, min_token_prob)
    tokens = _tokens("token_ids", token_ids)
    depth = max_depth

    def occurrences(strings, context, own):
        n = len(context)
        ends = []
        for s in strings:
            limit = len(s) - 1 if own else len(s)  # the context's own final occurrence excluded
            ends += [(s, j + n) for j in range(limit - n + 1) if s[j:j + n] == context]
        return ends

    def follow(strings, context, budget, own):
        draft, score, prob = [], 0.0, 1.0
        context = list(context)
        while len(draft) < budget:
            counts: dict[int, int] = {}
            for s, end in occurrences(strings, context, own):
                if end < len(s):
                    counts[s[end]] = counts.get(s[end], 0) + 1
            if not counts:
                break
            token = min(counts, key=lambda t: (-counts[t], t))
            prob *= counts[token] / sum(counts.values())
            if prob < min_token_prob:
                break
            draft.append(token)
            score += prob
            context = (context + [token])[-depth:]
            own = False  # the context now includes drafts: every occurrence counts
        return draft, score

    def candidates(strings, own, true_len):
        best = Draft([])
        groups: dict[tuple, int] = {}
        for m in range(1, min(depth, len(tokens) - (1 if own else 0)) + 1):
            ends = occurrences(strings, tokens[-m:], own)
            if not ends:
                break
            groups[tuple((id(s), e) for s, e in ends)] = m  # the longest context of each occurrence set
        longest = max(groups.values(), default=0)
        for m in sorted(groups.values(), reverse=True):
            budget_len = true_len if (m == longest and true_len) else m
            draft, score = follow(strings, tokens[-m:], _budget(budget_len, k, max_spec_factor, max_spec_offset), own)
            if score > best.score:
                best = Draft(draft, score, budget_len)
        return best

    own_len = next((m for m in range(len(tokens) - 1, 0, -1)
                    if occurrences([tokens], tokens[-m:], True)), 0)
    best = candidates([tokens], True, own_len if own_len >= depth else 0)
    other = candidates([list(c) for c in cached], False, 0)
    return other if other.score > best.score else best
