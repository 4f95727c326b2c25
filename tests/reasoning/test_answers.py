"""Final-answer extraction, normalization and majority voting."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcot.reasoning import (
    extract_answer,
    majority_vote,
    normalize_answer,
    vote_is_decided,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("So x = 3, hence \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),  # the last one
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{\\dfrac{a}{b}}", "\\frac{a}{b}"),
    ("\\boxed{ 1,000 }", "1000"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and a truncated \\boxed{\\frac{1}{", "3"),  # the last complete one
    ("\\boxed{x} then\nFinal answer: y", "x"),  # boxed wins over a marker
    ("Reasoning...\nFinal answer: 12", "12"),
    ("Final answer: 12\nmore thought\nFinal answer: 13.", "13"),  # the last marker
    ("**Final Answer:** $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("**Final answer**: **B**", "B"),
    ("final answer:\n\n  17  \n", "17"),  # the marker ends its line: the next non-empty line
    ("So the answer is 1,234,567.", "1234567"),
    ("Final answer: 12\n\nI hope the answer is correct.", "12"),  # "Final answer" outranks "answer is"
    ("The answer is 3. Actually, the answer is 4.", "4"),
    ("Therefore, the final answer is $-5$.", "-5"),
    ("The answer is: \\text{Paris}", "Paris"),
    ("The answer is 12.0", "12"),
    ("Final answer: 12.50", "12.5"),
    ("Final answer: +3", "3"),
    ("Final answer: -0.0", "0"),
    ("Final answer: \\(x^2\\)", "x^2"),
    ("Final answer: 1/2", "1/2"),  # no arithmetic: 1/2 and 0.5 stay different
    ("Final answer: x = 3", "x = 3"),
    ("Final answer: 1,00", "1,00"),  # not a thousands separator
    ("Final answer: 007", "007"),
    ("Final answer: ...", "..."),
    ("I am not sure.", None),
    ("", None),
    ("Final answer:", None),
    ("\\boxed{}", None),
    ("\\boxed{ $ $ }", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("  $$42$$ ", "42"), ("**$1,000$**", "1000"), ("\\boxed{5}.", "5"), ("\\textbf{C}", "C"),
    ("\\boxed{1}+\\boxed{2}", "\\boxed{1}+\\boxed{2}"), ("3.14159", "3.14159"), ("Yes", "Yes"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_extract_answer_never_fails(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer)


@pytest.mark.parametrize(("answers", "winner", "counts"), [
    ([], None, {}),
    ([None, None], None, {}),
    (["a"], "a", {"a": 1}),
    (["b", "a", "a", None, "b", "a"], "a", {"b": 2, "a": 3}),
    (["a", "b", "b", "a"], "b", {"a": 2, "b": 2}),  # tie: "b" reached 2 first
    (["a", "b"], "a", {"a": 1, "b": 1}),
    ([None, "x", None], "x", {"x": 1}),
])
def test_majority_vote(answers, winner, counts):
    got_winner, got_counts = majority_vote(answers)
    assert got_winner == winner
    assert got_counts == counts and list(got_counts) == list(counts)  # first-appearance order


def test_majority_vote_rejects_non_strings():
    with pytest.raises(TypeError, match=r"answers\[1\]"):
        majority_vote(["a", 3])


@pytest.mark.parametrize(("counts", "remaining", "decided"), [
    ({}, 0, True),
    ({}, 1, False),
    ({"a": 1}, 0, True),
    ({"a": 3}, 2, True),
    ({"a": 3}, 3, False),  # 3 new votes for another answer would tie
    ({"a": 5, "b": 2}, 2, True),
    ({"a": 5, "b": 2}, 3, False),
    ({"a": 2, "b": 2}, 0, True),
    ({"a": 2, "b": 2, "c": 1}, 1, False),
])
def test_vote_is_decided(counts, remaining, decided):
    assert vote_is_decided(counts, remaining) is decided


@pytest.mark.parametrize("seen", [0, 1, 2, 3, 4, 5, 6])
def test_vote_is_decided_means_no_completion_changes_the_winner(seen):
    """Exhaustive over 6 samples and 3 answers (None included): whenever the counts of the
    first `seen` samples are decided, every way the rest could go gives the same winner."""
    choices = ["a", "b", "c", None]
    total = 6
    for first in itertools.product(choices, repeat=seen):
        winner, counts = majority_vote(list(first))
        if not vote_is_decided(counts, total - seen):
            continue
        for rest in itertools.product(choices, repeat=total - seen):
            assert majority_vote(list(first) + list(rest))[0] == winner


def test_vote_is_decided_bad_arguments():
    with pytest.raises(ValueError, match="remaining"):
        vote_is_decided({"a": 1}, -1)
    with pytest.raises(TypeError, match="remaining"):
        vote_is_decided({"a": 1}, 1.0)
    with pytest.raises(TypeError, match="counts"):
        vote_is_decided([("a", 1)], 1)
    with pytest.raises(ValueError, match=r"counts\['a'\]"):
        vote_is_decided({"a": -1}, 1)


def test_extract_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="text"):
        extract_answer(None)


def test_many_unclosed_boxes_are_scanned_once():
    """A truncated completion full of unclosed `\\boxed{`: each box's scan stops at the next
    box (scanning each to the end would be quadratic: 20k boxes x 180k characters)."""
    text = "\\boxed{1} " + "\\boxed{ {" * 20_000
    assert extract_answer(text) == "1"
