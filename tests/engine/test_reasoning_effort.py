"""SamplingParams(reasoning_effort=...): the documented budgets (one table for the engine, the
server and the CLI), the budget enforced in the engine with the answer lead-in, precedence
of an explicit thinking_budget, and bad values."""

import argparse
import dataclasses

import pytest
from helpers import load_test_module

import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.entrypoints import protocol
from fastcot.reasoning import REASONING_EFFORT_BUDGETS, effort_budget

reasoning = load_test_module("engine/test_reasoning.py")
END, EOS, X, A = reasoning.END, reasoning.EOS, reasoning.X, reasoning.A
PROMPT = reasoning.PROMPT


def test_documented_budgets_are_the_one_table():
    assert REASONING_EFFORT_BUDGETS == {"low": 1024, "medium": 2048, "high": 8192}
    assert protocol.REASONING_EFFORT_BUDGETS is REASONING_EFFORT_BUDGETS  # the server's
    for effort, budget in REASONING_EFFORT_BUDGETS.items():
        assert SamplingParams(reasoning_effort=effort, max_tokens=None).effective_thinking_budget == budget
        assert SamplingParams(reasoning_effort=effort, max_tokens=1500).effective_thinking_budget == min(budget, 1500)
        assert effort_budget(effort, 100) == 100
    assert SamplingParams(max_tokens=None).effective_thinking_budget is None


def test_explicit_thinking_budget_wins():
    p = SamplingParams(reasoning_effort="high", thinking_budget=7, max_tokens=100)
    assert p.effective_thinking_budget == 7
    assert dataclasses.replace(p, thinking_budget=None).effective_thinking_budget == 100  # high, lowered


def thinks_long(token, i):
    """Thinks ("x") for 1100 tokens unless stopped; after </think> or the lead-in, "A" until
    EOS at 1060 tokens."""
    if i >= 1060:
        return EOS
    if token in (END, A, *map(ord, "\n\n")):
        return A
    return X


def make_llm(delimiters=True):
    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), num_hidden_layers=1,
                                 max_position_embeddings=2048)
    tokenizer = reasoning.thinking_tokenizer.build_thinking_tokenizer()
    return LLM.from_model(reasoning.ScriptedModel(config, thinks_long, len(PROMPT)), tokenizer, device="cpu",
                          num_kv_blocks=1100, block_size=4, thinking_delimiters=None if delimiters else False)


def test_low_effort_caps_thinking_at_1024_with_the_lead_in():
    llm = make_llm()
    low = SamplingParams(temperature=0, max_tokens=1100, reasoning_effort="low")
    explicit = SamplingParams(temperature=0, max_tokens=1100, thinking_budget=1024)
    a, b = (o.outputs[0] for o in llm.generate([PROMPT, PROMPT], [low, explicit], use_tqdm=False))
    assert a.num_reasoning_tokens == 1024 and a.reasoning_text == "x" * 1024
    assert a.token_ids[1024] == END and a.token_ids[1025:1027] == [ord("\n")] * 2  # the default lead-in
    assert a.text.startswith("\n\nA") and a.finish_reason == "stop"
    assert a.token_ids == b.token_ids and a.text == b.text


@pytest.mark.parametrize("effort", ["medium", "high"])
def test_engine_applies_the_effort_budget(effort):
    llm = make_llm()
    request = llm.engine.make_request("r", PROMPT, SamplingParams(max_tokens=None, reasoning_effort=effort))
    assert request.outs[0].thinking.budget == REASONING_EFFORT_BUDGETS[effort]
    request = llm.engine.make_request("s", PROMPT, SamplingParams(max_tokens=1500, reasoning_effort=effort))
    assert request.outs[0].thinking.budget == 1500  # a budget above max_tokens could never bind


def test_bad_reasoning_effort():
    for bad in ["extreme", "LOW", 1, ["low"]]:
        with pytest.raises(ValueError, match="reasoning_effort must be one of"):
            SamplingParams(reasoning_effort=bad)
    with pytest.raises(ValueError, match="min_thinking_tokens must be <= the low effort budget"):
        SamplingParams(reasoning_effort="low", max_tokens=None, min_thinking_tokens=2000)
    with pytest.raises(ValueError, match="reasoning_effort needs a reasoning model"):
        make_llm(delimiters=False).generate([PROMPT], SamplingParams(reasoning_effort="low"), use_tqdm=False)


def test_cli_flag():
    from fastcot.cli_chat import add_arguments, sampling_kwargs, sampling_params

    p = argparse.ArgumentParser()
    add_arguments(p, chat=False)
    args = p.parse_args(["--prompt", "x", "--reasoning-effort", "medium"])
    kwargs, _ = sampling_kwargs(args, {})
    assert kwargs["reasoning_effort"] == "medium"
    assert sampling_params(kwargs).effective_thinking_budget == 2048
    with pytest.raises(SystemExit):
        p.parse_args(["--prompt", "x", "--reasoning-effort", "max"])


def test_cli_refuses_effort_for_a_model_without_thinking(capsys, monkeypatch, tmp_path):
    from fastcot.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", "hi", "--model", "tiny-random", "--reasoning-effort", "low"]) == 2
    err = capsys.readouterr().err
    assert "--reasoning-effort needs a reasoning model" in err
