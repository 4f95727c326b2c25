"""Chat and text completions over the `AsyncEngine`: prompts in, OpenAI responses or SSE out.

Route handlers stay thin: they parse the body and call `Serving.chat` / `Serving.completion`.
Tokenization and chat templates run on one worker thread (the loop never waits on them; one
thread, because a Hugging Face fast tokenizer must not be entered by two threads at once
while it changes its settings). A text-completion request with several prompts becomes one
engine request per prompt; choice `p * n + i` is sample i of prompt p, as in OpenAI.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastcot.entrypoints import protocol as p
from fastcot.entrypoints import sse
from fastcot.entrypoints.async_engine import AsyncEngine, RequestGroup, SampleDelta
from fastcot.entrypoints.errors import APIError, bad_request, server_error
from fastcot.entrypoints.params import Limits, check_model, check_prompt_ids, check_request, sampling_params

log = logging.getLogger("fastcot.serve")
DISCONNECT_POLL_S = 1.0  # how often a non-streamed request checks that its client is still there


@dataclass
class _Choice:
    """One choice of a response, accumulated from its deltas."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    num_tokens: int = 0
    num_reasoning_tokens: int = 0
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add(self, delta: SampleDelta) -> None:
        if delta.text:
            self.text.append(delta.text)
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        self.num_tokens += delta.num_tokens
        self.num_reasoning_tokens += delta.num_reasoning_tokens
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


class _Counts:
    """Token counts of a whole response (for `usage`)."""

    def __init__(self, prompt_tokens: int):
        self.prompt, self.completion, self.reasoning = prompt_tokens, 0, 0

    def add(self, delta: SampleDelta) -> None:
        self.completion += delta.num_tokens
        self.reasoning += delta.num_reasoning_tokens

    def usage(self) -> p.Usage:
        return p.Usage(prompt_tokens=self.prompt, completion_tokens=self.completion,
                       total_tokens=self.prompt + self.completion,
                       completion_tokens_details=p.CompletionTokensDetails(reasoning_tokens=self.reasoning))


def _failed(delta: SampleDelta) -> APIError | None:
    if delta.finish_reason == "error":
        return server_error(f"generation failed: {delta.stop_reason}")
    return None


class Serving:
    def __init__(self, engine: AsyncEngine, tokenizer, params_class, *, served_model_names: list[str],
                 limits: Limits, reasoning_model: bool, keepalive_s: float = 5.0, defaults: dict | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.params_class = params_class
        self.served_model_names = served_model_names
        self.limits = limits
        self.reasoning_model = reasoning_model
        self.keepalive_s = keepalive_s
        self.defaults = dict(defaults or {})  # sampling fields a request leaves out
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastcot-tokenizer")
        reserved = set(inspect.signature(tokenizer.apply_chat_template).parameters) - {"kwargs"}
        self._reserved_template_kwargs = reserved | {"messages"}

    def close(self) -> None:
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, fn, *args)

    # --- chat ----------------------------------------------------------------------------------

    async def chat(self, request: p.ChatCompletionRequest, raw: Request) -> Response:
        check_model(request.model, self.served_model_names)
        check_request(request, self.limits)
        prompt = await self._off_loop(self._chat_prompt, request)
        check_prompt_ids(prompt, self.limits, "messages")
        params = sampling_params(request, self.params_class, prompt_len=len(prompt), limits=self.limits,
                                 reasoning_model=self.reasoning_model, prompt_param="messages",
                                 defaults=self.defaults)
        response_id = p.random_id("chatcmpl")
        group = await self.engine.add_requests([(response_id, prompt, params)])
        counts = _Counts(len(prompt))
        if request.stream:
            return sse.EventStreamResponse(self._chat_stream(group, request, response_id, counts), group.close)
        choices = await self._collect(group, raw, request.n, counts)
        if choices is None:
            return Response(status_code=499)
        return JSONResponse(p.ChatCompletionResponse(
            id=response_id, model=request.model, usage=counts.usage(),
            choices=[self._chat_choice(i, c, request) for i, c in enumerate(choices)],
        ).model_dump(exclude_none=False))

    def _chat_prompt(self, request: p.ChatCompletionRequest) -> list[int]:
        messages = []
        for i, message in enumerate(request.messages):
            item = message.model_dump(exclude_none=True)
            if item["role"] == "developer":
                item["role"] = "system"
            if isinstance(message.content, list):
                parts = []
                for part in message.content:
                    if part.type != "text" or part.text is None:
                        raise bad_request(f"only text content parts are supported, got type {part.type!r}",
                                          param=f"messages.{i}.content")
                    parts.append(part.text)
                item["content"] = "\n".join(parts)
            messages.append(item)
        kwargs = dict(request.chat_template_kwargs or {})
        clash = sorted(set(kwargs) & self._reserved_template_kwargs)
        if clash:
            raise bad_request(f"chat_template_kwargs may not set {clash}", param="chat_template_kwargs")
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=request.add_generation_prompt and not request.continue_final_message,
                continue_final_message=request.continue_final_message, tokenize=True, return_dict=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a template error is the conversation's fault (jinja raise_exception)
            raise bad_request(f"the chat template failed on these messages: {exc}", param="messages") from None
        return list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)

    def _chat_choice(self, index: int, choice: _Choice, request) -> p.ChatChoice:
        reasoning = "".join(choice.reasoning) if choice.reasoning and request.include_reasoning else None
        logprobs = (p.ChatLogprobs(content=_chat_logprobs(choice.logprobs, request.top_logprobs or 0))
                    if request.logprobs else None)
        return p.ChatChoice(index=index, finish_reason=choice.finish_reason, logprobs=logprobs,
                            message=p.ChatResponseMessage(content="".join(choice.text), reasoning_content=reasoning,
                                                          reasoning=reasoning))

    def _chat_stream(self, group: RequestGroup, request, response_id: str, counts: _Counts):
        created = int(time.time())

        def chunk(choices, usage=None):
            return sse.event(p.ChatCompletionChunk(id=response_id, created=created, model=request.model,
                                                   choices=choices, usage=usage))

        def render(index: int, delta: SampleDelta) -> str | None:
            reasoning = (delta.reasoning or None) if request.include_reasoning else None
            message = p.DeltaMessage(content=delta.text or None, reasoning_content=reasoning, reasoning=reasoning)
            logprobs = (p.ChatLogprobs(content=_chat_logprobs(delta.logprobs, request.top_logprobs or 0))
                        if delta.logprobs else None)
            if message.content is None and reasoning is None and delta.finish_reason is None and logprobs is None:
                return None
            return chunk([p.ChatChunkChoice(index=index, delta=message, logprobs=logprobs,
                                            finish_reason=delta.finish_reason)], _running_usage(request, counts))

        roles = [chunk([p.ChatChunkChoice(index=i, delta=p.DeltaMessage(role="assistant", content=""))])
                 for i in range(request.n)]
        return self._events(group, counts, request.n, first=roles, render=render,
                            usage=_usage_chunk(request, lambda usage: chunk([], usage)))

    # --- text completions ----------------------------------------------------------------------

    async def completion(self, request: p.CompletionRequest, raw: Request) -> Response:
        check_model(request.model, self.served_model_names)
        prompts = request.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts or any(not x for x in prompts):
            raise bad_request("the prompt is empty", param="prompt")
        check_request(request, self.limits, num_prompts=len(prompts))
        ids = await self._off_loop(self._encode_all, prompts)
        response_id = p.random_id("cmpl")
        requests = []
        for i, prompt in enumerate(ids):
            param = "prompt" if len(ids) == 1 else f"prompt.{i}"
            check_prompt_ids(prompt, self.limits, param)
            params = sampling_params(request, self.params_class, prompt_len=len(prompt), limits=self.limits,
                                     reasoning_model=self.reasoning_model, prompt_param=param, defaults=self.defaults)
            requests.append((f"{response_id}-{i}", prompt, params))
        group = await self.engine.add_requests(requests)
        counts = _Counts(sum(len(x) for x in ids))
        if request.stream:
            return sse.EventStreamResponse(self._completion_stream(group, request, response_id, counts),
                                         group.close)
        choices = await self._collect(group, raw, request.n, counts)
        if choices is None:
            return Response(status_code=499)
        return JSONResponse(p.CompletionResponse(
            id=response_id, model=request.model, usage=counts.usage(),
            choices=[_completion_choice(i, c, request) for i, c in enumerate(choices)],
        ).model_dump(exclude_none=False))

    def _encode_all(self, prompts) -> list[list[int]]:
        return [self.tokenizer.encode(x) if isinstance(x, str) else list(x) for x in prompts]

    def _completion_stream(self, group: RequestGroup, request, response_id: str, counts: _Counts):
        created = int(time.time())

        def chunk(choices, usage=None):
            return sse.event(p.CompletionResponse(id=response_id, created=created, model=request.model,
                                                  choices=choices, usage=usage))

        def render(index: int, delta: SampleDelta) -> str | None:
            if not (delta.text or delta.reasoning or delta.finish_reason or delta.logprobs):
                return None
            one = _Choice()
            one.add(delta)
            return chunk([_completion_choice(index, one, request)], _running_usage(request, counts))

        return self._events(group, counts, request.n, render=render,
                            usage=_usage_chunk(request, lambda usage: chunk([], usage)))

    # --- shared --------------------------------------------------------------------------------

    async def _events(self, group: RequestGroup, counts: _Counts, n: int, *, render, first=(), usage=None):
        """The SSE text of a streamed response: the `first` events, `render(choice index,
        delta)` for each delta as it comes (None: nothing to send), a keep-alive comment after
        each `keepalive_s` without one, the `usage(Usage)` event if given, then `[DONE]`. A
        request that fails ends the stream with an error event and `[DONE]`. Closing the
        stream (the client went away) aborts what is unfinished."""
        base = {rid: i * n for i, rid in enumerate(group.request_ids)}
        try:
            for event in first:
                yield event
            while not group.finished:
                try:
                    got = await group.get(timeout=self.keepalive_s)
                except APIError as exc:
                    yield sse.event(json.dumps(exc.body()))
                    yield sse.DONE
                    return
                if got is None:
                    yield sse.KEEPALIVE
                    continue
                request_id, update = got
                for delta in update.samples:
                    counts.add(delta)
                    error = _failed(delta)
                    if error is not None:
                        yield sse.event(json.dumps(error.body()))
                        yield sse.DONE
                        return
                    event = render(base[request_id] + delta.index, delta)
                    if event is not None:
                        yield event
            if usage is not None:
                yield usage(counts.usage())
            yield sse.DONE
        finally:
            group.close()

    async def _collect(self, group: RequestGroup, raw: Request, n: int, counts: _Counts) -> list[_Choice] | None:
        """Every choice of a non-streamed request, or None if the client went away (the
        request is then aborted)."""
        base = {rid: i * n for i, rid in enumerate(group.request_ids)}
        choices = [_Choice() for _ in range(len(base) * n)]
        next_check = time.monotonic() + DISCONNECT_POLL_S
        try:
            while not group.finished:
                got = await group.get(timeout=DISCONNECT_POLL_S)
                if time.monotonic() >= next_check:
                    if await raw.is_disconnected():
                        return None
                    next_check = time.monotonic() + DISCONNECT_POLL_S
                if got is None:
                    continue
                request_id, update = got
                for delta in update.samples:
                    error = _failed(delta)
                    if error is not None:
                        raise error
                    counts.add(delta)
                    choices[base[request_id] + delta.index].add(delta)
        finally:
            group.close()
        return choices


def _usage_chunk(request, make):
    """`make` (Usage -> the usage event) if the request asked for usage in its stream, else None."""
    return make if request.stream_options and request.stream_options.include_usage else None


def _running_usage(request, counts: _Counts) -> p.Usage | None:
    """The usage so far, in every chunk, with `stream_options.continuous_usage_stats` (vLLM's)."""
    options = request.stream_options
    return counts.usage() if options and options.continuous_usage_stats else None


def _chat_logprobs(entries, k: int) -> list[p.TokenLogprob]:
    """OpenAI chat logprobs from `(token, logprob, ranked)` entries, the `k` most likely each."""
    def encoded(text):
        return list(text.encode("utf-8"))

    return [p.TokenLogprob(token=token, logprob=logprob, bytes=encoded(token),
                           top_logprobs=[p.TopLogprob(token=t, logprob=lp, bytes=encoded(t)) for t, lp in ranked[:k]])
            for token, logprob, ranked in entries]


def _completion_choice(index: int, choice: _Choice, request: p.CompletionRequest) -> p.CompletionChoice:
    reasoning = "".join(choice.reasoning) or None
    logprobs = None
    if request.logprobs is not None:
        offsets, at = [], 0
        for token, _, _ in choice.logprobs:
            offsets.append(at)
            at += len(token)
        entries = choice.logprobs
        logprobs = p.CompletionLogprobs(tokens=[t for t, _, _ in entries], token_logprobs=[lp for _, lp, _ in entries],
                                        top_logprobs=[dict(ranked[:request.logprobs]) for _, _, ranked in entries],
                                        text_offset=offsets)
    return p.CompletionChoice(index=index, text="".join(choice.text), reasoning_content=reasoning,
                              reasoning=reasoning, logprobs=logprobs, finish_reason=choice.finish_reason)
