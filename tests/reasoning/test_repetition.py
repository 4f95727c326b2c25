"""RepetitionGuard: fires at the exact token that completes a loop, never on random text or
text that reuses phrases, with bounded state and work per token."""

import random

import pytest

from fastcot.reasoning import RepetitionGuard


def first_fire(guard: RepetitionGuard, tokens) -> int | None:
    """The index of the first token for which `observe` returned True."""
    return next((i for i, token in enumerate(tokens) if guard.observe(token)), None)


def primitive_unit(rng: random.Random, period: int) -> list[int]:
    """Random tokens 1000.. that are not a power of a shorter span (the loop's period is exact)."""
    while True:
        unit = [1000 + rng.randrange(20) for _ in range(period)]
        if not any(period % d == 0 and unit == unit[:d] * (period // d) for d in range(1, period)):
            return unit


@pytest.mark.parametrize("period", [1, 2, 3, 5, 8, 13, 31, 64])
@pytest.mark.parametrize(("repeats", "min_tokens"), [(8, 64), (3, 1), (4, 40)])
def test_fires_when_the_required_repeats_complete(period, repeats, min_tokens):
    rng = random.Random(period)
    guard = RepetitionGuard(max_period=64, repeats=repeats, min_tokens_in_loop=min_tokens)
    prefix = [rng.randrange(500) for _ in range(100)]  # ids < 1000: never part of the loop
    unit = primitive_unit(rng, period)
    needed = guard.required_repeats(period)
    assert needed == max(repeats, -(-min_tokens // period))
    tokens = prefix + unit * (needed + 2)
    assert first_fire(guard, tokens) == len(prefix) + period * needed - 1
    assert guard.loop_period == period
    # Level-triggered: stays True while the loop goes on, False once it breaks.
    assert guard.observe(unit[0]) and guard.loop_period == period
    assert not guard.observe(-1) and guard.loop_period is None


def test_default_thresholds():
    guard = RepetitionGuard()
    assert (guard.max_period, guard.repeats, guard.min_tokens_in_loop) == (64, 8, 64)
    assert [guard.required_repeats(p) for p in (1, 2, 4, 8, 20, 64)] == [64, 32, 16, 8, 8, 8]
    assert first_fire(RepetitionGuard(), [7] * 63) is None
    assert first_fire(RepetitionGuard(), [7] * 64) == 63


def test_longer_periods_than_max_period_are_not_looked_for():
    rng = random.Random(3)
    unit = primitive_unit(rng, 40)
    assert first_fire(RepetitionGuard(max_period=32, repeats=3, min_tokens_in_loop=1), unit * 10) is None
    assert first_fire(RepetitionGuard(max_period=40, repeats=3, min_tokens_in_loop=1), unit * 10) == 119


def test_one_repeat_short_is_not_a_loop():
    unit = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert first_fire(RepetitionGuard(), unit * 7 + unit[:9]) is None


@pytest.mark.parametrize("vocab", [2, 5, 1000])
def test_never_fires_on_random_text(vocab):
    rng = random.Random(vocab)
    # Even over two tokens a random run of 64 equal tokens or 8 equal spans is vanishingly rare.
    tokens = [rng.randrange(vocab) for _ in range(20_000)]
    assert first_fire(RepetitionGuard(), tokens) is None


def test_never_fires_on_text_that_reuses_phrases():
    """Phrases repeated often, even back to back a few times, with other text around them."""
    rng = random.Random(0)
    phrases = [[rng.randrange(2000) for _ in range(rng.randrange(2, 12))] for _ in range(30)]
    tokens = []
    for _ in range(3000):
        phrase = rng.choice(phrases)
        tokens += phrase * rng.randrange(1, 4)  # "very very very", "Wait. Wait."
        tokens += [rng.randrange(2000) for _ in range(rng.randrange(0, 3))]
    tokens += [5] * 40  # a short run of one token (a rule line, zeros)
    assert first_fire(RepetitionGuard(), tokens) is None


def test_reset_forgets_history():
    guard = RepetitionGuard(repeats=2, min_tokens_in_loop=1)
    assert first_fire(guard, [1, 2, 1, 2]) == 3
    guard.reset()
    assert guard.num_tokens == 0 and guard.loop_period is None
    assert not guard.observe(1) and not guard.observe(2) and not guard.observe(1)
    assert guard.observe(2)


def test_state_and_work_per_token_are_bounded():
    """Each observe does one pass over `max_period` counters whatever the length: the state
    never grows past `max_period` tokens and counters."""
    guard = RepetitionGuard(max_period=16)
    rng = random.Random(1)
    for i in range(100_000):
        guard.observe(rng.randrange(3))
        if i % 10_000 == 0:
            assert len(guard._recent) <= 16 and len(guard._runs) == 16
    assert guard.num_tokens == 100_000


def test_bad_arguments():
    for kwargs, match in [({"max_period": 0}, "max_period"), ({"repeats": 1}, "repeats"),
                          ({"min_tokens_in_loop": 0}, "min_tokens_in_loop")]:
        with pytest.raises(ValueError, match=match):
            RepetitionGuard(**kwargs)
    with pytest.raises(TypeError, match="repeats"):
        RepetitionGuard(repeats=2.5)
    with pytest.raises(TypeError, match="token"):
        RepetitionGuard().observe("a")
