"""NgramIndex: proposals equal the brute-force reference under any mix of extend, rollback and
propose, with work per token independent of the sequence length."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcot.reasoning import NgramIndex, propose_from


class CountingDict(dict):
    """A dict that counts lookups and writes: the index's work, without timing."""

    ops = 0

    def get(self, key, default=None):
        self.ops += 1
        return super().get(key, default)

    def __setitem__(self, key, value):
        self.ops += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.ops += 1
        super().__delitem__(key)


def counting(index: NgramIndex) -> CountingDict:
    index._latest = CountingDict(index._latest)
    return index._latest


@pytest.mark.parametrize(("tokens", "k", "expected"), [
    ([], 3, []),
    ([7], 3, []),
    ([1, 2, 3, 4, 1, 2], 2, [3, 4]),
    ([1, 2, 3, 4, 1, 2], 10, [3, 4, 1, 2]),
    ([1, 2, 3, 1, 2, 4, 1, 2], 1, [4]),  # the latest occurrence wins
    ([5, 1, 2, 9, 6, 1, 2, 8, 5, 1, 2], 1, [9]),  # the longer n-gram (5, 1, 2) wins over (1, 2)
    ([3, 3, 3], 2, [3]),  # an earlier occurrence may overlap the suffix
    ([1, 2, 3], 4, []),
    ([1, 2, 1, 2], 0, []),
])
def test_propose_examples(tokens, k, expected):
    assert propose_from(tokens, k) == expected
    assert NgramIndex(tokens).propose(k) == expected


def test_min_n_one_matches_single_tokens():
    assert NgramIndex([4, 8, 9, 4], min_n=1, max_n=3).propose(2) == [8, 9]
    assert NgramIndex([4, 8, 9, 4]).propose(2) == []


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 3), max_size=60),
    k=st.integers(0, 6),
    n_range=st.sampled_from([(1, 1), (2, 4), (1, 5), (3, 3)]),
)
def test_equals_reference_on_prefixes(tokens, k, n_range):
    min_n, max_n = n_range
    index = NgramIndex([], min_n=min_n, max_n=max_n)
    assert index.propose(k) == propose_from([], k, min_n, max_n)
    for i, token in enumerate(tokens):
        index.extend([token])
        assert index.propose(k) == propose_from(tokens[:i + 1], k, min_n, max_n)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(st.integers(0, 4), max_size=8)),
        st.tuples(st.just("rollback"), st.integers(0, 10)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(prompt=st.lists(st.integers(0, 4), max_size=20), ops=operations, k=st.integers(1, 5))
def test_equals_reference_after_rollbacks(prompt, ops, k):
    index, shadow = NgramIndex(prompt), list(prompt)
    for op, arg in ops:
        if op == "extend":
            index.extend(arg)
            shadow += arg
        else:
            n = min(arg, len(shadow))
            index.rollback(n)
            del shadow[len(shadow) - n:]
        assert len(index) == len(shadow)
        assert index.propose(k) == propose_from(shadow, k)


def test_rollback_restores_the_table_exactly():
    prompt = [1, 2, 3, 1, 2, 3, 4]
    index = NgramIndex(prompt)
    table = dict(index._latest)
    index.extend([1, 2, 3, 9, 1, 2])
    index.rollback(6)
    assert index._latest == table
    index.rollback(len(prompt))
    assert index._latest == {} and index._undo == [] and len(index) == 0


def test_speculative_cycle_on_repetitive_text():
    """Propose, append the draft, keep the accepted prefix and roll back the rest, then append
    the verified next token: as the engine will."""
    rng = random.Random(0)
    phrase = [rng.randrange(100) for _ in range(12)]
    tokens = phrase * 4
    index, pos, accepted_total = NgramIndex(tokens[:5]), 5, 0
    while pos < len(tokens):
        draft = index.propose(4)
        assert draft == propose_from(index._tokens, 4)
        index.extend(draft)
        accepted = 0
        while accepted < len(draft) and pos + accepted < len(tokens) and draft[accepted] == tokens[pos + accepted]:
            accepted += 1
        index.rollback(len(draft) - accepted)
        pos += accepted
        accepted_total += accepted
        if pos < len(tokens):
            index.extend([tokens[pos]])
            pos += 1
    assert index._tokens == tokens
    assert accepted_total >= 2 * len(phrase)  # the repeats are drafted


def _repetitive(length: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    phrases = [[rng.randrange(50) for _ in range(rng.randrange(3, 15))] for _ in range(20)]
    out = []
    while len(out) < length:
        out += rng.choice(phrases) if rng.random() < 0.8 else [rng.randrange(50)]
    return out[:length]


@pytest.mark.parametrize("length", [1_000, 50_000])
def test_work_per_token_does_not_grow_with_length(length):
    """Counted dict operations per extend/propose/rollback are bounded by a constant of
    (min_n, max_n, k) at any length."""
    index = NgramIndex(_repetitive(length), min_n=2, max_n=4)
    table = counting(index)
    sizes = 4 - 2 + 1
    for token in _repetitive(200, seed=1):
        table.ops = 0
        index.extend([token])
        assert table.ops <= 2 * sizes  # one lookup (for the undo log) and one write per n
        table.ops = 0
        assert len(index.propose(8)) <= 8
        assert table.ops <= sizes
    table.ops = 0
    index.rollback(200)
    assert table.ops <= 200 * sizes


def test_extend_work_is_linear_in_new_tokens():
    index = NgramIndex(_repetitive(10_000))
    table = counting(index)
    index.extend(_repetitive(500, seed=2))
    assert table.ops <= 500 * 2 * 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_n"):
        NgramIndex([], min_n=0)
    with pytest.raises(ValueError, match="max_n"):
        NgramIndex([], min_n=3, max_n=2)
    with pytest.raises(TypeError, match="min_n"):
        NgramIndex([], min_n=2.0)
    with pytest.raises(TypeError, match="new_ids"):
        NgramIndex([1, 2]).extend([1.5])
    with pytest.raises(TypeError, match="new_ids"):
        NgramIndex(["a"])
    index = NgramIndex([1, 2, 3])
    with pytest.raises(ValueError, match=r"n must be in \[0, 3\]"):
        index.rollback(4)
    with pytest.raises(ValueError, match="n must be"):
        index.rollback(-1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        index.propose(-1)
    with pytest.raises(TypeError, match="k must be an int"):
        propose_from([1], 1.0)
    assert len(index) == 3
