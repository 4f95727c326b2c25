"""OpenAI request fields to the engine's SamplingParams: defaults, renamed fields, the
reasoning-effort budgets, and a 400 naming the field for each bad value (no model, no HTTP)."""

import pytest

pytest.importorskip("fastapi")

from pydantic import ValidationError  # noqa: E402

from fastcot import SamplingParams  # noqa: E402
from fastcot.entrypoints.errors import APIError, from_validation_error  # noqa: E402
from fastcot.entrypoints.params import (  # noqa: E402
    Limits,
    check_model,
    check_prompt_ids,
    check_request,
    sampling_params,
)
from fastcot.entrypoints.protocol import (  # noqa: E402
    REASONING_EFFORT_BUDGETS,
    ChatCompletionRequest,
    CompletionRequest,
)

LIMITS = Limits(max_model_len=100, max_n=4, max_prompts=3, vocab_size=50)
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def params(request, prompt_len=10, reasoning=True):
    return sampling_params(request, SamplingParams, prompt_len=prompt_len, limits=LIMITS, reasoning_model=reasoning,
                           prompt_param="messages")


def error(fn, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400
    return info.value


def test_fields_map_to_sampling_params():
    sp = params(chat(n=2, temperature=0.5, top_p=0.9, top_k=-1, min_p=0.1, repetition_penalty=1.2, seed=7,
                     stop="END", max_completion_tokens=20, max_tokens=5, logprobs=True, top_logprobs=3,
                     min_tokens=2, ignore_eos=True, stop_token_ids=[3]))
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.repetition_penalty, sp.seed) == (
        2, 0.5, 0.9, 0, 0.1, 1.2, 7)
    assert (sp.stop, sp.max_tokens, sp.logprobs, sp.min_tokens, sp.ignore_eos, sp.stop_token_ids) == (
        ["END"], 20, 3, 2, True, [3])  # max_completion_tokens wins over max_tokens


def test_defaults_leave_the_engine_defaults_and_fill_the_context():
    sp = params(chat(), prompt_len=30)
    default = SamplingParams()
    assert (sp.temperature, sp.top_p, sp.top_k, sp.logprobs) == (default.temperature, default.top_p, default.top_k,
                                                                 None)
    assert sp.max_tokens == LIMITS.max_model_len - 30
    assert CompletionRequest(model="m", prompt="x").max_tokens == 16  # OpenAI's text-completion default


@pytest.mark.parametrize("effort", sorted(REASONING_EFFORT_BUDGETS))
def test_reasoning_effort_is_a_documented_budget_capped_by_max_tokens(effort):
    budget = REASONING_EFFORT_BUDGETS[effort]
    assert params(chat(reasoning_effort=effort), prompt_len=1).thinking_budget == min(budget, LIMITS.max_model_len - 1)
    big = Limits(max_model_len=10**5)
    sp = sampling_params(chat(reasoning_effort=effort), SamplingParams, prompt_len=1, limits=big,
                         reasoning_model=True, prompt_param="messages")
    assert sp.thinking_budget == budget
    # An explicit budget wins; a model without thinking delimiters ignores reasoning_effort.
    assert params(chat(reasoning_effort=effort, thinking_token_budget=3)).thinking_budget == 3
    assert params(chat(reasoning_effort=effort), reasoning=False).thinking_budget is None


def test_reasoning_fields_on_a_model_that_does_not_think_are_400():
    assert error(params, chat(thinking_token_budget=4), reasoning=False).param == "thinking_token_budget"
    assert error(params, chat(min_thinking_tokens=4), reasoning=False).param == "min_thinking_tokens"


def test_engine_refusals_name_the_request_field():
    e = error(params, chat(thinking_token_budget=2, min_thinking_tokens=5))
    assert e.param == "min_thinking_tokens" and "thinking_budget" in e.message


@pytest.mark.parametrize("fields, param", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"stop": [""]}, "stop"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"), ({"reasoning_effort": "max"},
                                                                               "reasoning_effort"),
    ({"seed": "seven"}, "seed"),
])
def test_invalid_values_are_400_naming_the_field(fields, param):
    with pytest.raises(ValidationError) as info:
        chat(**fields)
    e = from_validation_error(info.value)
    assert (e.status, e.param, e.type) == (400, param, "invalid_request_error")
    assert param.split(".")[0] in e.message


@pytest.mark.parametrize("fields, param", [
    ({"n": 5}, "n"), ({"tools": [{"type": "function"}]}, "tools"), ({"logit_bias": {"1": 2}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"top_logprobs": 2}, "top_logprobs"),
])
def test_requests_this_server_cannot_honour_are_400(fields, param):
    assert error(check_request, chat(**fields), LIMITS).param == param


def test_unknown_fields_are_reported_and_harmless_ones_ignored():
    request = chat(user="u", store=False, frobnicate=1)
    assert request.unknown_fields() == ["frobnicate"]


def test_prompt_checks():
    assert error(check_model, "other", ["m"]).code == "model_not_found"
    assert error(check_prompt_ids, [], LIMITS, "prompt").param == "prompt"
    assert "[0, 50)" in error(check_prompt_ids, [1, 50], LIMITS, "prompt").message
    assert error(check_prompt_ids, [1] * 100, LIMITS, "prompt").code == "context_length_exceeded"
    e = error(params, chat(max_tokens=91), prompt_len=10)
    assert (e.param, e.code) == ("max_tokens", "context_length_exceeded")
    assert params(chat(max_tokens=90), prompt_len=10).max_tokens == 90
    completion = CompletionRequest(model="m", prompt=["a", "b", "c", "d"])
    assert error(check_request, completion, LIMITS, num_prompts=4).param == "prompt"
    assert error(check_request, CompletionRequest(model="m", prompt="a", echo=True), LIMITS).param == "echo"


def test_engine_defaults_fill_what_the_request_leaves_out():
    defaults = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "repetition_penalty": 1.1}
    sp = sampling_params(chat(top_p=0.5), SamplingParams, prompt_len=1, limits=LIMITS, reasoning_model=True,
                         prompt_param="messages", defaults=defaults)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty) == (0.6, 0.5, 20, 1.1)
