"""Reasoning models in the engine: the thinking section split from the answer (also when
streaming), thinking budgets and minimum thinking forced in the running batch, the
repetition-loop guard, and their bad inputs."""

import dataclasses

import pytest
import torch
from helpers import load_test_module

import fastcot.models
from fastcot import LLM, SamplingParams

thinking_tokenizer = load_test_module("reasoning/thinking_tokenizer.py")
START, END = thinking_tokenizer.THINK_START_ID, thinking_tokenizer.THINK_END_ID
EOS = 257
A, X = ord("A"), ord("x")
PROMPT = [11, 20, 30, START, 66]  # a generation prompt that opens the thinking section


class ScriptedModel(torch.nn.Module):
    """A model with no math whose greedy next token is `script(input_id, output_index)`,
    where output_index is the index of the token it predicts in the completion."""

    def __init__(self, config, script, prompt_len):
        super().__init__()
        self.config = config
        self.script = script
        self.prompt_len = prompt_len
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return torch.stack([input_ids, positions], dim=1)

    def compute_logits(self, hidden):
        logits = torch.zeros(hidden.shape[0], self.config.vocab_size)
        for row, (token, position) in enumerate(hidden.tolist()):
            logits[row, self.script(token, position + 1 - self.prompt_len)] = 10.0
        return logits


def make_llm(script, *, delimiters=True, prompt_len=5, **kwargs):
    config = fastcot.models.load_config("tiny-random")
    config = dataclasses.replace(config, num_hidden_layers=1, max_position_embeddings=1024)
    tokenizer = thinking_tokenizer.build_thinking_tokenizer()
    return LLM.from_model(ScriptedModel(config, script, prompt_len), tokenizer, device="cpu", num_kv_blocks=256,
                          block_size=4, thinking_delimiters=None if delimiters else False, **kwargs)


LEAD_IN = "\n\nSo: "


def thinks_then_answers(think_for):
    """x for `think_for` tokens, then </think>, then A until EOS at 40 tokens (also after
    </think> or the answer lead-in came early)."""
    def script(token, i):
        if i >= 40:
            return EOS
        if token in (END, A, *map(ord, LEAD_IN)) or i > think_for:
            return A
        return END if i == think_for else X
    return script


GREEDY = {"temperature": 0, "max_tokens": 60}


def test_reasoning_and_answer_are_split():
    llm = make_llm(thinks_then_answers(12))
    assert (llm.thinking.start_ids, llm.thinking.end_ids) == ([START], [END])
    out = llm.generate([PROMPT], SamplingParams(**GREEDY), use_tqdm=False)[0].outputs[0]
    assert out.reasoning_text == "x" * 12
    assert out.text == "A" * 27
    assert out.token_ids == [X] * 12 + [END] + [A] * 27 + [EOS]
    assert (out.num_reasoning_tokens, out.num_delimiter_tokens, out.num_answer_tokens) == (12, 1, 28)
    # Without delimiters everything is answer text (the delimiter's text included).
    plain = make_llm(thinks_then_answers(12), delimiters=False)
    out = plain.generate([PROMPT], SamplingParams(**GREEDY), use_tqdm=False)[0].outputs[0]
    assert out.reasoning_text == "" and out.text == "x" * 12 + "</think>" + "A" * 27


def test_streaming_tags_reasoning_and_answer():
    llm = make_llm(thinks_then_answers(7))
    deltas = list(llm.generate_stream([PROMPT, PROMPT], SamplingParams(**GREEDY)))
    for index in ("0", "1"):
        mine = [d for d in deltas if d.request_id == index]
        assert "".join(d.text for d in mine if d.kind == "reasoning") == "x" * 7
        assert "".join(d.text for d in mine if d.kind == "answer") == "A" * 32
        assert [d.finish_reason for d in mine if d.finish_reason] == ["stop"] and mine[-1].finish_reason == "stop"


@pytest.mark.parametrize("budget", [0, 1, 9, 20])
def test_thinking_budget_caps_reasoning_exactly(budget):
    llm = make_llm(thinks_then_answers(30))  # would think for 30 tokens
    params = [SamplingParams(**GREEDY, thinking_budget=budget, answer_lead_in=LEAD_IN),
              SamplingParams(**GREEDY)]  # the same batch, no budget
    capped, free = (o.outputs[0] for o in llm.generate([PROMPT, PROMPT], params, use_tqdm=False))
    assert capped.num_reasoning_tokens == budget and capped.reasoning_text == "x" * budget
    assert capped.token_ids[budget] == END  # forced right after the budget
    lead_in = [ord(c) for c in "\n\nSo: "]
    assert capped.token_ids[budget + 1: budget + 1 + len(lead_in)] == lead_in
    # The forced tokens are what the next steps fed the model: it answers after </think>.
    assert capped.text.startswith("\n\nSo: A")
    assert set(capped.text[len("\n\nSo: "):]) == {"A"}
    assert free.num_reasoning_tokens == 30 and free.reasoning_text == "x" * 30


def test_min_thinking_tokens_replaces_an_early_end_with_the_continuation():
    def script(token, i):  # tries to end thinking from the 5th token on
        if token == END or token == A:
            return A if i < 50 else EOS
        return X if i < 5 else END

    llm = make_llm(script)
    out = llm.generate([PROMPT], SamplingParams(**GREEDY, min_thinking_tokens=12), use_tqdm=False)[0].outputs[0]
    # 5 x, then "\nWait" twice (5 tokens each) before an end is accepted at 15 >= 12 tokens.
    assert out.reasoning_text == "xxxxx\nWait\nWait"
    assert out.num_reasoning_tokens == 15  # >= 12
    assert out.token_ids.count(END) == 1 and set(out.text) == {"A"}
    unforced = llm.generate([PROMPT], SamplingParams(**GREEDY), use_tqdm=False)[0].outputs[0]
    assert unforced.reasoning_text == "xxxxx"


def test_repetition_guard_ends_a_loop():
    def script(token, i):  # answers, then loops on "ab"
        if token == ord("a"):
            return ord("b")
        return ord("a") if i >= 3 else ord("q")

    llm = make_llm(script, delimiters=False)
    prompt = [10, 20, 30, 40, 50]
    guarded, plain = (o.outputs[0] for o in llm.generate(
        [prompt, prompt], [SamplingParams(temperature=0, max_tokens=200, repetition_guard=True),
                           SamplingParams(temperature=0, max_tokens=200)], use_tqdm=False))
    assert guarded.finish_reason == "repetition" and len(guarded.token_ids) < 100
    assert plain.finish_reason == "length" and len(plain.token_ids) == 200


def test_bad_reasoning_inputs():
    with pytest.raises(ValueError, match="thinking_budget"):
        SamplingParams(max_tokens=10, thinking_budget=11)
    with pytest.raises(ValueError, match="thinking_budget"):
        SamplingParams(thinking_budget=-1)
    with pytest.raises(ValueError, match="min_thinking_tokens"):
        SamplingParams(max_tokens=100, thinking_budget=5, min_thinking_tokens=6)
    with pytest.raises(ValueError, match="min_thinking_tokens"):
        SamplingParams(min_thinking_tokens=-2)
    plain = make_llm(thinks_then_answers(3), delimiters=False)
    with pytest.raises(ValueError, match="thinking_budget.*thinking delimiters"):
        plain.generate([PROMPT], SamplingParams(thinking_budget=4), use_tqdm=False)
    with pytest.raises(ValueError, match="single token"):
        make_llm(thinks_then_answers(3)).__class__.from_model(
            ScriptedModel(plain.config, thinks_then_answers(3), 5), thinking_tokenizer.build_thinking_tokenizer(),
            device="cpu", num_kv_blocks=16, thinking_delimiters=("<reason>", "</reason>"))


def test_streamed_reasoning_and_answer_equal_the_final_split_with_stop_strings():
    # Held-back text (a possible stop string) is split by the thinking span when released.
    llm = make_llm(thinks_then_answers(6))
    for stop in (["AAAx"], ["xx</"], ["xA"], ["AAA"], ["x", "zz"]):
        params = SamplingParams(**GREEDY, stop=stop)
        (final,) = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs
        deltas = list(llm.generate_stream([PROMPT], params))
        assert "".join(d.text for d in deltas if d.kind == "reasoning") == final.reasoning_text
        assert "".join(d.text for d in deltas if d.kind == "answer") == final.text
        assert deltas[-1].finish_reason == final.finish_reason
