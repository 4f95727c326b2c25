"""Suffix-decoding proposals: the incremental automaton equals the brute-force reference on
random token streams (own tokens and a cache of outputs, drafts accepted or not), counts are
exact for short contexts, the cache stays bounded (LRU by tokens) and bad arguments fail.

`FASTCOT_SUFFIX_CASES=N` runs N random cases (default 60)."""

import os
import random
import tracemalloc

import pytest

from fastcot.reasoning.suffix import (
    SuffixAutomaton,
    SuffixCache,
    SuffixIndex,
    propose_from,
)

CASES = int(os.environ.get("FASTCOT_SUFFIX_CASES", "60"))


@pytest.mark.parametrize("case", range(CASES))
def test_proposals_equal_the_brute_force_reference(case):
    rng = random.Random(case)
    vocab = rng.choice([2, 3, 5, 20])
    depth = rng.choice([1, 2, 3, 5, 24])
    options = {"max_spec_factor": rng.choice([0.5, 1.0, 2.0]), "max_spec_offset": rng.choice([0.0, 1.0]),
               "min_token_prob": rng.choice([0.0, 0.1, 0.4])}
    k = rng.choice([1, 3, 8, 20])
    cache = SuffixCache(rng.choice([0, 40, 1000]), max_depth=depth)
    for _ in range(rng.randint(0, 4)):
        cache.add([rng.randrange(vocab) for _ in range(rng.randint(1, 30))])
    index = SuffixIndex([rng.randrange(vocab)], max_depth=depth)
    index.extend([rng.randrange(vocab) for _ in range(rng.randint(0, 10))], cache)
    for step in range(25):
        if step == 12 and cache.max_tokens:  # the cache changes while the request runs
            cache.add([rng.randrange(vocab) for _ in range(rng.randint(1, 30))])
            index.extend([], cache)
        got = index.propose(k, cache=cache, **options)
        held = list(cache.entries.values()) + cache.evicted  # evicted outputs linger until a rebuild
        want = propose_from(index.tokens, k, cached=held, max_depth=depth, **options)
        assert (got.tokens, round(got.score, 9)) == (want.tokens, round(want.score, 9)), \
            f"step {step}: tokens {index.tokens}, cache {held}"
        assert sum(map(len, held)) == cache.automaton.num_tokens
        assert len(got.tokens) <= k
        new = [rng.randrange(vocab) for _ in range(rng.randint(1, 3))]
        if got.tokens and rng.random() < 0.6:  # some drafts accepted, whole or in part
            new = got.tokens[: rng.randint(1, len(got.tokens))] + new[:1]
        index.extend(new, cache)


def test_counts_are_occurrences_of_short_contexts():
    rng = random.Random(1)
    strings = [[rng.randrange(3) for _ in range(rng.randint(1, 40))] for _ in range(4)]
    depth = 3
    a = SuffixAutomaton(depth)
    for i, s in enumerate(strings):
        a.start(i)
        a.extend(s)
    for m in range(1, depth + 2):
        contexts = {tuple(s[j:j + m]) for s in strings for j in range(len(s) - m + 1)}
        for context in contexts:
            state = 0
            for t in context:
                state = a.next[state][t]
            want = sum(s[j:j + m] == list(context) for s in strings for j in range(len(s) - m + 1))
            assert a.count[state] == want, context
    assert a.num_states <= 2 * sum(map(len, strings)) + 1


def test_drafts_adapt_to_match_length_and_frequency():
    index = SuffixIndex([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2])
    assert index.propose(10).tokens == [3, 4]  # a 2-token match drafts 2 tokens (factor 1)
    assert index.propose(10, max_spec_factor=3.0).tokens == [3, 4, 5, 6, 7, 8]
    assert index.propose(10, max_spec_offset=1.0).tokens == [3, 4, 5]
    # After "7": 8 three times, 9 once; the 4-to-1 split leaves 9 out at min_token_prob 0.3.
    branching = SuffixIndex([7, 8, 7, 8, 7, 9, 7, 8, 0, 7])
    assert branching.propose(4, max_spec_factor=4.0, min_token_prob=0.3).tokens[:1] == [8]
    assert branching.propose(4, max_spec_factor=4.0, min_token_prob=0.9).tokens == []


def test_the_cache_supplies_earlier_outputs():
    cache = SuffixCache(100, max_depth=8)
    cache.add([50, 51, 52, 53, 54, 55, 56, 57])
    index = SuffixIndex([9, 8, 50, 51, 52, 53], max_depth=8)
    index.extend([], cache)
    assert index.propose(8, cache=cache).tokens == [54, 55, 56, 57]  # 4 matched tokens, 4 drafted
    assert index.propose(8, cache=None).tokens == []


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    cache = SuffixCache(100, max_depth=4)
    outputs = [[1000 * i + j for j in range(30)] for i in range(6)]
    for out in outputs[:3]:
        cache.add(out)
    index = SuffixIndex(outputs[0][:5], max_depth=4)
    index.extend([], cache)
    assert index.propose(4, cache=cache).tokens == outputs[0][5:9]  # a draft from output 0: used
    cache.add(outputs[3])  # 120 tokens: the least recently used, output 1, goes
    assert [tokens[0] for tokens in cache.entries.values()] == [2000, 0, 3000]
    for out in outputs[4:]:
        cache.add(out)
    assert cache.num_live_tokens <= 100 and cache.automaton.num_tokens <= 2 * 100 + 30
    for _ in range(50):  # many more outputs: memory stays bounded
        cache.add([random.randrange(10 ** 6) for _ in range(40)])
    assert cache.num_live_tokens <= 100 and cache.automaton.num_tokens <= 2 * 100 + 40
    assert cache.automaton.num_states <= 2 * cache.automaton.num_tokens + 1
    cache.clear()
    assert cache.num_live_tokens == 0 and cache.automaton.num_tokens == 0


def test_a_long_output_costs_linear_memory():
    tracemalloc.start()
    index = SuffixIndex([i % 97 for i in range(20000)] + [5, 6, 7] * 3000)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert index.automaton.num_states <= 2 * len(index) + 1
    assert used < 1500 * len(index)  # bytes per token
    assert index.propose(16).tokens == [5, 6, 7] * 5 + [5]  # a loop is drafted in full


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_depth"):
        SuffixAutomaton(0)
    with pytest.raises(ValueError, match="max_tokens"):
        SuffixCache(-1)
    with pytest.raises(TypeError, match="token_ids"):
        SuffixIndex(["a"])
    with pytest.raises(ValueError, match="min_token_prob"):
        propose_from([1, 2, 1], 2, min_token_prob=2.0)
