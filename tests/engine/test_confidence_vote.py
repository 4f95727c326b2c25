"""DeepConf's host-side rules against hand-computed cases: percentile and threshold, the
top-eta filter, the confidence-weighted vote, consensus, and the settings' validation."""

import random

import pytest

from fastcot.reasoning.confidence import (
    ConfidenceConfig,
    confidence_threshold,
    has_consensus,
    percentile,
    top_eta,
    weighted_vote,
)


def test_percentile_interpolates_like_numpy():
    values = [3.0, 1.0, 4.0, 1.5, 9.0]  # sorted: 1, 1.5, 3, 4, 9
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 9.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4 + 0.6 * 5)  # rank 3.6
    assert percentile(values, 10) == pytest.approx(1 + 0.4 * 0.5)  # rank 0.4
    assert percentile([7.0], 90) == 7.0
    rng = random.Random(0)
    np = pytest.importorskip("numpy")
    for _ in range(20):
        xs = [rng.uniform(-5, 5) for _ in range(rng.randint(1, 30))]
        q = rng.uniform(0, 100)
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_threshold_is_the_100_minus_eta_percentile():
    warm = [float(i) for i in range(1, 17)]  # 16 warm-up paths, confidences 1..16
    assert confidence_threshold(warm, 10) == pytest.approx(14.5)  # rank 13.5 of 0..15: keeps the top ~10%
    assert confidence_threshold(warm, 90) == pytest.approx(2.5)  # rank 1.5: keeps ~90%


def test_top_eta_keeps_the_most_confident():
    conf = [0.5, 3.0, 2.0, 3.0, 1.0, 9.0, 0.1, 4.0, 2.5, 0.7]
    assert top_eta(conf, 10) == [5]  # ceil(1.0) = 1 path
    assert top_eta(conf, 30) == [1, 5, 7]  # 9, 4, then the tie at 3.0 goes to the lower index
    assert top_eta(conf, 90) == [0, 1, 2, 3, 4, 5, 7, 8, 9]  # all but the least confident (0.1)
    assert top_eta(conf, 100) == list(range(10))
    assert top_eta([2.0, 2.0, 1.0], 50) == [0, 1]  # ceil(1.5) = 2
    assert top_eta([5.0], 1) == [0] and top_eta([], 10) == []


def test_weighted_vote_against_a_hand_count():
    answers = ["7", "3", None, "7", "3", "3"]
    weights = [5.0, 2.0, 100.0, 1.5, 1.0, 2.0]
    winner, totals = weighted_vote(answers, weights)
    assert totals == {"7": 6.5, "3": 5.0} and winner == "7"  # fewer votes, more weight
    assert weighted_vote(["a", "b"], [1.0, 1.0]) == ("a", {"a": 1.0, "b": 1.0})  # tie: first to appear
    assert weighted_vote([None], [1.0]) == (None, {})
    with pytest.raises(ValueError, match="answers"):
        weighted_vote(["a"], [])


def test_consensus():
    assert has_consensus({"a": 19.0, "b": 1.0}, 0.95)
    assert not has_consensus({"a": 18.9, "b": 1.1}, 0.95)
    assert has_consensus({"a": 1.0}, 1.0) and not has_consensus({}, 0.5)


def test_config_defaults_and_validation():
    c = ConfidenceConfig()
    assert (c.mode, c.eta, c.warmup, c.window, c.top_k, c.consensus) == ("online", 10.0, 16, 2048, 20, 0.95)
    assert ConfidenceConfig.from_user(True) == c and ConfidenceConfig.from_user(None) is None
    assert ConfidenceConfig.from_user("offline").mode == "offline"
    assert ConfidenceConfig.from_user({"eta": 90, "window": 8}).window == 8
    for bad, match in [({"mode": "live"}, "mode"), ({"eta": 0}, "eta"), ({"eta": 101}, "eta"),
                       ({"warmup": 0}, "warmup"), ({"window": 1.5}, "window"), ({"top_k": 0}, "top_k"),
                       ({"consensus": 0}, "consensus"), ({"interval": 0}, "interval"), ({"etaa": 1}, "unknown")]:
        with pytest.raises(ValueError, match=match):
            ConfidenceConfig.from_user(bad)
    with pytest.raises(TypeError, match="confidence"):
        ConfidenceConfig.from_user(3)
