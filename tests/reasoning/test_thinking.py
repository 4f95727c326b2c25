"""Thinking delimiters, the streamed reasoning/answer splitter, token-level thinking state, and
the chain-of-thought prompt's answer split."""

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thinking_tokenizer import (
    THINK_END,
    THINK_END_ID,
    THINK_START,
    THINK_START_ID,
    build_thinking_tokenizer,
)

from fastcot.models import load_config, load_tokenizer
from fastcot.reasoning import (
    COT_SYSTEM_PROMPT,
    ReasoningSplitter,
    ThinkingDelimiters,
    ThinkingState,
    extract_answer,
    find_thinking_delimiters,
    prompt_opens_thinking,
    split_cot_answer,
)

THINK = ThinkingDelimiters(THINK_START, THINK_END, [THINK_START_ID], [THINK_END_ID])


@pytest.fixture(scope="module")
def tokenizer():
    return build_thinking_tokenizer()


# --- the test tokenizer ---------------------------------------------------------------------

def test_thinking_tokenizer_fits_the_tiny_model(tokenizer):
    vocab_size = load_config("tiny-random").vocab_size
    assert tokenizer.convert_tokens_to_ids([THINK_START, THINK_END]) == [THINK_START_ID, THINK_END_ID]
    assert THINK_START_ID < vocab_size and THINK_END_ID < vocab_size
    assert max(tokenizer.get_vocab().values()) < vocab_size
    # Any text encodes as with the preset tokenizer; the delimiters survive skip_special_tokens.
    preset = load_tokenizer("tiny-random")
    text = "héllo wörld ✓ 日本 🚀 \x00\n"
    assert tokenizer.encode(text) == preset.encode(text)
    ids = tokenizer.encode(f"a{THINK_START}b{THINK_END}c", add_special_tokens=False)
    assert ids == [ord("a"), THINK_START_ID, ord("b"), THINK_END_ID, ord("c")]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<think>b</think>c"


def test_thinking_tokenizer_template(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>x</think>\nyes"},
                {"role": "user", "content": "q"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    assert "\n\nyes<|eot_id|>" in prompt and "</think>" not in prompt  # earlier reasoning dropped
    closed = build_thinking_tokenizer(template_opens_thinking=False)
    assert closed.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).endswith("\n\n")


# --- find_thinking_delimiters ---------------------------------------------------------------

def test_detects_think_tokens(tokenizer):
    assert find_thinking_delimiters(tokenizer) == THINK


def test_no_delimiters_in_the_preset_tokenizer():
    assert find_thinking_delimiters(load_tokenizer("tiny-random")) is None


def test_explicit_delimiters_are_encoded(tokenizer):
    found = find_thinking_delimiters(tokenizer, start="<reason>", end="</reason>")
    assert found == ThinkingDelimiters("<reason>", "</reason>", list(b"<reason>"), list(b"</reason>"))
    with pytest.raises(ValueError, match="both start and end"):
        find_thinking_delimiters(tokenizer, start="<reason>")


class FakeTokenizer:
    """The tokenizer surface used: encode, get_vocab, chat_template."""

    def __init__(self, vocab: dict[str, int], chat_template=None):
        self.vocab, self.chat_template = vocab, chat_template

    def get_vocab(self):
        return dict(self.vocab)

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return [self.vocab[text]] if text in self.vocab else [ord(c) for c in text]


@pytest.mark.parametrize(("vocab", "template", "expected"), [
    ({"<think>": 500, "</think>": 501}, None, ("<think>", "</think>", [500], [501])),
    ({"<think>": 500, "</think>": 501}, "{{ x }}<think>\n", ("<think>", "</think>", [500], [501])),
    ({"<think>": 500, "</think>": 501}, "{{ messages }}", None),  # unused tokens of the vocabulary
    ({"<think>": 500}, None, None),  # half a pair
    ({"<|begin_of_thought|>": 7, "<|end_of_thought|>": 8}, "... <|end_of_thought|> ...",
     ("<|begin_of_thought|>", "<|end_of_thought|>", [7], [8])),
    ({"<thinking>": 1, "</thinking>": 2, "<think>": 3, "</think>": 4}, "{{ '</thinking>' }}",
     ("<thinking>", "</thinking>", [1], [2])),  # the pair the template mentions
    ({"<think>": 500, "</think>": 501}, {"default": "x", "tool_use": "<think>"},
     ("<think>", "</think>", [500], [501])),  # named templates
])
def test_detection_rules(vocab, template, expected):
    found = find_thinking_delimiters(FakeTokenizer(vocab, template))
    if expected is None:
        assert found is None
    else:
        assert found == ThinkingDelimiters(*expected)


def test_find_rejects_non_tokenizers():
    with pytest.raises(TypeError, match="tokenizer"):
        find_thinking_delimiters(object())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"start": "", "end": "b", "start_ids": [1], "end_ids": [2]}, ValueError, "start"),
    ({"start": "a", "end": "a", "start_ids": [1], "end_ids": [2]}, ValueError, "differ"),
    ({"start": "a", "end": "b", "start_ids": [], "end_ids": [2]}, ValueError, "start_ids"),
    ({"start": "a", "end": "b", "start_ids": [1], "end_ids": [1]}, ValueError, "start_ids and end_ids"),
    ({"start": "a", "end": "b", "start_ids": [1], "end_ids": ["x"]}, TypeError, "end_ids"),
])
def test_delimiters_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ThinkingDelimiters(**kwargs)


def test_prompt_opens_thinking(tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    for opens in (True, False):
        tok = build_thinking_tokenizer(template_opens_thinking=opens)
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt_opens_thinking(tok.encode(prompt, add_special_tokens=False), THINK) is opens
    assert not prompt_opens_thinking([THINK_START_ID, 5, THINK_END_ID, 6], THINK)
    assert prompt_opens_thinking([THINK_END_ID, 5, THINK_START_ID, 6], THINK)
    assert prompt_opens_thinking(list(b"x<r><r>y"), ThinkingDelimiters("<r>", "</r>", list(b"<r>"), list(b"</r>")))


# --- ReasoningSplitter ----------------------------------------------------------------------

def split_all(text, deltas, starts_in_reasoning, delimiters=THINK):
    """Feed `text` cut at the `deltas` positions; merged (kind, text) pieces, checking the
    held-back text stays shorter than the longest delimiter after every feed."""
    splitter = ReasoningSplitter(delimiters, starts_in_reasoning=starts_in_reasoning)
    bound = max(len(delimiters.start), len(delimiters.end))
    pieces, cuts = [], sorted({0, len(text), *deltas})
    for a, b in itertools.pairwise(cuts):
        pieces += splitter.feed(text[a:b])
        assert len(splitter._held) < bound
    pieces += splitter.finish()
    merged = []
    for kind, part in pieces:
        assert part, "no empty pieces"
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + part)
        else:
            merged.append((kind, part))
    return merged


@pytest.mark.parametrize(("text", "starts_in_reasoning", "expected"), [
    ("plan</think>answer", True, [("reasoning", "plan"), ("answer", "answer")]),
    ("<think>plan</think>answer", False, [("reasoning", "plan"), ("answer", "answer")]),
    ("\n<think>plan</think>\n\n42", False, [("answer", "\n"), ("reasoning", "plan"), ("answer", "\n\n42")]),
    ("just an answer", False, [("answer", "just an answer")]),
    ("never ends", True, [("reasoning", "never ends")]),
    ("a <think>b</think>c</think><think>d", True, [("reasoning", "a b"), ("answer", "c</think><think>d")]),
    ("x</think>y", False, [("answer", "xy")]),  # a stray end delimiter before any start
    ("</think>", True, []),
    ("<thin</thinkk>", True, [("reasoning", "<thin</thinkk>")]),
    ("<think", False, [("answer", "<think")]),  # flushed by finish
])
def test_splitter_examples(text, starts_in_reasoning, expected):
    assert split_all(text, [], starts_in_reasoning) == expected


def test_splitter_docstring_example():
    splitter = ReasoningSplitter(THINK, starts_in_reasoning=True)
    assert splitter.feed("2+2 is 4</thi") == [("reasoning", "2+2 is 4")]
    assert splitter._held == "</thi" and not splitter.ended
    assert splitter.feed("nk>\n\n4") == [("answer", "\n\n4")]
    assert splitter.ended and not splitter.in_reasoning
    assert splitter.finish() == []


pieces = st.lists(st.sampled_from(["<think>", "</think>", "<", "</", "think", ">", "a", "b\n", "<th", "ink>"]),
                  max_size=25).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=pieces, data=st.data(), starts_in_reasoning=st.booleans())
def test_splitter_any_chunking_equals_one_shot(text, data, starts_in_reasoning):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=10))
    assert split_all(text, cuts, starts_in_reasoning) == split_all(text, [], starts_in_reasoning)


def test_splitter_character_by_character_long_stream():
    """A 100k-character stream fed one character at a time: held text stays bounded and the
    split is right (the test's own check, not a timing)."""
    reasoning = "Wait, </thin> <thi let me check. " * 3000
    text = f"<think>{reasoning}</think>The answer is 4."
    assert split_all(text, range(len(text)), False) == [("reasoning", reasoning), ("answer", "The answer is 4.")]


def test_splitter_bad_arguments():
    with pytest.raises(TypeError, match="delimiters"):
        ReasoningSplitter(("<think>", "</think>"), starts_in_reasoning=True)
    with pytest.raises(TypeError, match="delta"):
        ReasoningSplitter(THINK, starts_in_reasoning=True).feed(b"x")


# --- ThinkingState --------------------------------------------------------------------------

def observe_all(delimiters, tokens, starts_in_reasoning):
    state = ThinkingState(delimiters, starts_in_reasoning=starts_in_reasoning)
    for token in tokens:
        state.observe(token)
    return state


def test_state_single_token_delimiters():
    s = THINK_START_ID, THINK_END_ID
    state = observe_all(THINK, [1, 2, s[0], 3, 4, 5, s[1], 6, s[0], 7], False)
    assert (state.num_answer_tokens, state.num_reasoning_tokens, state.num_delimiter_tokens) == (5, 3, 2)
    assert state.ended and not state.in_reasoning
    state = ThinkingState(THINK, starts_in_reasoning=True)
    assert state.in_reasoning and not state.ended
    for i in range(5):
        state.observe(100 + i)
        assert state.num_reasoning_tokens == i + 1
    state.observe(THINK_END_ID)
    assert state.ended and (state.num_reasoning_tokens, state.num_answer_tokens) == (5, 0)


def test_state_multi_token_delimiters_take_partial_matches_back():
    d = ThinkingDelimiters("<r>", "</r>", [9, 1], [9, 2, 1])
    state = ThinkingState(d, starts_in_reasoning=True)
    for token in [5, 9, 9, 2]:
        state.observe(token)
    assert state.num_reasoning_tokens == 4 and not state.ended  # [9, 2] may still become </r>
    state.observe(1)
    assert state.ended and state.num_reasoning_tokens == 2 and state.num_delimiter_tokens == 3
    state.observe(9)
    state.observe(1)  # a start delimiter after the end is answer
    assert state.num_answer_tokens == 2


byte_delims = ThinkingDelimiters("<r>", "</r>", list(b"<r>"), list(b"</r>"))


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(["<r>", "</r>", "<", "</", "r", ">", "a", "<</r"]), max_size=30).map("".join),
       starts_in_reasoning=st.booleans())
def test_state_agrees_with_the_splitter_on_byte_tokens(text, starts_in_reasoning):
    """With one token per byte, the token counts are the byte lengths of the split texts."""
    state = observe_all(byte_delims, list(text.encode()), starts_in_reasoning)
    split = split_all(text, [], starts_in_reasoning, byte_delims)
    assert state.num_reasoning_tokens == sum(len(t) for k, t in split if k == "reasoning")
    assert state.num_answer_tokens == sum(len(t) for k, t in split if k == "answer")
    assert state.num_reasoning_tokens + state.num_answer_tokens + state.num_delimiter_tokens == len(text)
    splitter = ReasoningSplitter(byte_delims, starts_in_reasoning=starts_in_reasoning)
    splitter.feed(text)
    assert state.ended == splitter.ended


class CountingList(list):
    lookups = 0

    def __getitem__(self, i):
        CountingList.lookups += 1
        return super().__getitem__(i)


def test_state_work_per_token_is_constant_amortized():
    """KMP: failure-table lookups never exceed the tokens observed, at any length."""
    d = ThinkingDelimiters("<r>", "</r>", [1, 1, 2, 1, 1, 3], [1, 1, 1, 4])
    state = ThinkingState(d, starts_in_reasoning=True)
    for matcher in (state._start, state._end):
        matcher.failure = CountingList(matcher.failure)
    CountingList.lookups = 0
    rng = random.Random(0)
    tokens = [rng.choice([1, 1, 1, 2, 3]) for _ in range(100_000)]
    for token in tokens:
        state.observe(token)
    assert CountingList.lookups <= 2 * len(tokens)  # two matchers
    assert not state.ended and state.num_reasoning_tokens + state.num_delimiter_tokens == len(tokens)


def test_state_rejects_non_int_tokens():
    with pytest.raises(TypeError, match="token_id"):
        ThinkingState(THINK, starts_in_reasoning=True).observe("x")


# --- chain-of-thought prompt ----------------------------------------------------------------

def test_cot_system_prompt_asks_for_the_marked_answer():
    assert "step by step" in COT_SYSTEM_PROMPT and "check" in COT_SYSTEM_PROMPT
    assert "\nFinal answer: <answer>\n" in COT_SYSTEM_PROMPT


@pytest.mark.parametrize(("text", "expected"), [
    ("Step 1: 2+2=4.\nCheck: ok.\nFinal answer: 4", ("Step 1: 2+2=4.\nCheck: ok.", "4")),
    ("final answer: 3 ... wait.\nFinal Answer: 5\n", ("final answer: 3 ... wait.", "5")),
    ("thinking\n**Final Answer:** 5", ("thinking", "5")),
    ("thinking\n**Final answer**: x = 2", ("thinking", "x = 2")),
    ("no marker here\n", ("no marker here", "")),
    ("", ("", "")),
])
def test_split_cot_answer(text, expected):
    assert split_cot_answer(text) == expected


def test_split_cot_answer_and_extract_answer_agree():
    text = "2 + 3 = 5, and 5 * 2 = 10. Checking: 10 / 2 = 5.\nFinal answer: 10"
    assert split_cot_answer(text)[1] == extract_answer(text) == "10"
    with pytest.raises(TypeError, match="text"):
        split_cot_answer(None)
