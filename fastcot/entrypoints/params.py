"""From an OpenAI request to the engine's inputs: prompt token ids and `SamplingParams`.

Every check a client can fail raises `APIError` (400) naming the request field, before the
request reaches the engine. Semantics:

- `max_tokens` / `max_completion_tokens` count every output token, thinking included (as
  OpenAI's `max_completion_tokens` does for reasoning models). Left out (chat), a completion
  may run to the end of the context. A prompt plus `max_tokens` longer than the context is a
  400, as in OpenAI and vLLM.
- `thinking_token_budget` caps the thinking section (the engine then forces the end of
  thinking); `reasoning_effort` low/medium/high means budgets of 1024/2048/8192 tokens
  (`REASONING_EFFORT_BUDGETS`) when no explicit budget is given. A budget above `max_tokens`
  cannot bind and is lowered to it. On a model without thinking delimiters, `reasoning_effort`
  is ignored (clients send it to every model) and the explicit thinking fields are a 400.
- `top_k = -1` and `0` both mean off. Sampling fields left out take the engine's defaults
  (`LLMEngine.get_default_sampling_params()`: the checkpoint's generation_config.json).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from fastcot.entrypoints.errors import bad_request
from fastcot.entrypoints.protocol import ChatCompletionRequest, CompletionRequest
from fastcot.reasoning.thinking import effort_budget

# SamplingParams field -> request field, for error messages.
_API_NAMES = {"thinking_budget": "thinking_token_budget", "logprobs": "top_logprobs"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_model_len: int
    max_n: int = 16
    max_prompts: int = 64  # prompts in one text-completion request
    vocab_size: int | None = None


def check_model(requested: str, served: list[str]) -> None:
    if requested not in served:
        raise bad_request(f"The model `{requested}` does not exist; this server serves {served}.", param="model",
                          code="model_not_found")


def check_request(request: ChatCompletionRequest | CompletionRequest, limits: Limits, *, num_prompts: int = 1):
    refused = request.unsupported()
    if refused is not None:
        field, why = refused
        raise bad_request(why, param=field, code="unsupported_parameter")
    if request.n > limits.max_n:
        raise bad_request(f"n must be at most {limits.max_n}, got {request.n}", param="n")
    if num_prompts > limits.max_prompts:
        raise bad_request(f"at most {limits.max_prompts} prompts per request, got {num_prompts}", param="prompt")


def check_prompt_ids(ids: list[int], limits: Limits, param: str) -> None:
    if not ids:
        raise bad_request("the prompt is empty", param=param)
    vocab = limits.vocab_size
    if vocab is not None and any(not 0 <= t < vocab for t in ids):
        raise bad_request(f"prompt token ids must lie in [0, {vocab})", param=param)
    if len(ids) >= limits.max_model_len:
        raise bad_request(f"This model's maximum context length is {limits.max_model_len} tokens, but the prompt "
                          f"has {len(ids)} tokens; no room is left for the completion.", param=param,
                          code="context_length_exceeded")


def sampling_params(request: ChatCompletionRequest | CompletionRequest, params_class, *, prompt_len: int,
                    limits: Limits, reasoning_model: bool, prompt_param: str, defaults: dict | None = None):
    """The engine's `params_class` (SamplingParams) for one prompt of `request`; fields the
    request leaves out take `defaults` (the engine's, e.g. from the checkpoint's
    generation_config.json), else the library's."""
    max_tokens = _max_tokens(request, prompt_len, limits, prompt_param)
    kwargs = dict(defaults or {})
    kwargs.update(n=request.n, max_tokens=max_tokens, min_tokens=request.min_tokens, ignore_eos=request.ignore_eos,
                  seed=request.seed, stop=request.stop, stop_token_ids=request.stop_token_ids)
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        if getattr(request, name) is not None:
            kwargs[name] = getattr(request, name)
    if request.top_k is not None:
        kwargs["top_k"] = max(request.top_k, 0)
    known = {f.name for f in dataclasses.fields(params_class)}
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value:
            if name not in known:
                raise bad_request(f"{name} is not supported by this engine", param=name)
            kwargs[name] = value
    kwargs["logprobs"] = _logprobs(request)
    if "output_kind" in known:
        kwargs["output_kind"] = "delta"  # each step's output carries only what is new
    kwargs.update(_thinking(request, max_tokens, reasoning_model))
    try:
        return params_class(**kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        match = re.search(r"SamplingParams\.(\w+)", message)
        param = _API_NAMES.get(match.group(1), match.group(1)) if match else None
        raise bad_request(message, param=param) from None


def _max_tokens(request, prompt_len: int, limits: Limits, prompt_param: str) -> int:
    room = limits.max_model_len - prompt_len
    if isinstance(request, ChatCompletionRequest):
        asked, field = ((request.max_completion_tokens, "max_completion_tokens")
                        if request.max_completion_tokens is not None else (request.max_tokens, "max_tokens"))
    else:
        asked, field = request.max_tokens, "max_tokens"
    if asked is None:
        return room
    if asked > room:
        raise bad_request(f"This model's maximum context length is {limits.max_model_len} tokens. However, you "
                          f"requested {prompt_len + asked} tokens ({prompt_len} in the prompt, {asked} for the "
                          f"completion). Please reduce the prompt or {field}.", param=field,
                          code="context_length_exceeded")
    return asked


def _logprobs(request) -> int | None:
    if isinstance(request, ChatCompletionRequest):
        return (request.top_logprobs or 0) if request.logprobs else None
    return request.logprobs


def _thinking(request, max_tokens: int, reasoning_model: bool) -> dict:
    budget = request.thinking_token_budget
    if not reasoning_model:
        for name in ("thinking_token_budget", "min_thinking_tokens"):
            if getattr(request, name):
                raise bad_request(f"{name} needs a reasoning model; this model has no thinking delimiters",
                                  param=name)
        return {}
    effort = getattr(request, "reasoning_effort", None)
    if budget is None and effort is not None:
        budget = effort_budget(effort)
    out = {"min_thinking_tokens": request.min_thinking_tokens}
    if budget is not None:
        out["thinking_budget"] = min(budget, max_tokens)
    return out
