"""`fastcot serve` through the official openai client, on a tiny Llama (one server process for
the session, see conftest.py): chat and text completions, streamed and not, equal to offline
`LLM` generation; n samples; seeds; logprobs; stop strings; 32 concurrent streams; a dropped
stream freeing its blocks; the API key; /v1/models and /metrics."""

import asyncio
import time

import pytest

from fastcot import SamplingParams

MODEL = "tiny"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]


def offline_chat(offline, messages, **params):
    llm = offline("plain")
    return llm.generate([llm.chat_prompt(messages)], SamplingParams(**params), use_tqdm=False)[0]


def test_models_lists_every_served_name(plain_server):
    models = plain_server.client().models.list()
    assert [m.id for m in models.data] == ["tiny", "tiny-alias"]
    assert models.data[0].max_model_len == 256


def test_chat_greedy_equals_offline_generation(plain_server, offline):
    reply = plain_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                                          max_tokens=12)
    expected = offline_chat(offline, MESSAGES, temperature=0, max_tokens=12)
    choice = reply.choices[0]
    assert choice.message.content == expected.outputs[0].text
    assert choice.finish_reason == expected.outputs[0].finish_reason
    assert choice.message.role == "assistant"
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    usage = reply.usage
    assert usage.prompt_tokens == len(expected.prompt_token_ids)
    assert usage.completion_tokens == len(expected.outputs[0].token_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert choice.message.reasoning_content is None  # no thinking delimiters in this model


@pytest.mark.parametrize("penalties", [{"presence_penalty": 1.5}, {"frequency_penalty": 2.0},
                                       {"repetition_penalty": 1.3, "top_k": 5, "min_p": 0.05}])
def test_penalties_and_filters_reach_the_engine(plain_server, offline, penalties):
    extra = {k: v for k, v in penalties.items() if k not in ("presence_penalty", "frequency_penalty")}
    openai_fields = {k: v for k, v in penalties.items() if k not in extra}
    reply = plain_server.client().completions.create(model=MODEL, prompt="aaaa", temperature=0, max_tokens=12,
                                                     extra_body=extra, **openai_fields)
    expected = offline("plain").generate(["aaaa"], SamplingParams(temperature=0, max_tokens=12, **penalties),
                                         use_tqdm=False)[0].outputs[0]
    plain = offline("plain").generate(["aaaa"], SamplingParams(temperature=0, max_tokens=12),
                                      use_tqdm=False)[0].outputs[0]
    assert reply.choices[0].text == expected.text
    assert expected.token_ids != plain.token_ids  # the test would see a dropped field


def test_completion_greedy_equals_offline_generation(plain_server, offline):
    prompts = ["The quick brown", "1, 2, 3,"]
    reply = plain_server.client().completions.create(model="tiny-alias", prompt=prompts, temperature=0,
                                                     max_tokens=10)
    expected = offline("plain").generate(prompts, SamplingParams(temperature=0, max_tokens=10), use_tqdm=False)
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.text for c in reply.choices] == [e.outputs[0].text for e in expected]
    assert reply.usage.prompt_tokens == sum(len(e.prompt_token_ids) for e in expected)
    assert reply.usage.completion_tokens == sum(len(e.outputs[0].token_ids) for e in expected)


def test_token_id_prompts_are_accepted(plain_server, offline):
    ids = offline("plain").tokenizer.encode("Hello there")
    reply = plain_server.client().completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=6)
    expected = offline("plain").generate([ids], SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)[0]
    assert reply.choices[0].text == expected.outputs[0].text


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_streaming_equals_the_whole_response(plain_server, endpoint):
    client = plain_server.client()
    args = dict(model=MODEL, temperature=0, max_tokens=16, stop=None)
    if endpoint == "chat":
        whole = client.chat.completions.create(messages=MESSAGES, **args)
        chunks = list(client.chat.completions.create(messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}, **args))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[0].choices[0].delta.role == "assistant"
        expected_text = whole.choices[0].message.content
    else:
        whole = client.completions.create(prompt="Once upon", **args)
        chunks = list(client.completions.create(prompt="Once upon", stream=True,
                                                stream_options={"include_usage": True}, **args))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        expected_text = whole.choices[0].text
    assert text == expected_text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_continuous_usage_stats_count_up_in_every_chunk(plain_server):
    chunks = list(plain_server.client().completions.create(
        model=MODEL, prompt="Count", temperature=0, max_tokens=5, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    counts = [c.usage.completion_tokens for c in chunks]  # the last chunk is the usage chunk
    assert len(counts) >= 3 and counts == sorted(counts) and counts[-2:] == [5, 5] and counts[0] < 5
    assert all(c.usage.prompt_tokens == 6 for c in chunks)


def test_without_include_usage_no_usage_chunk(plain_server):
    chunks = list(plain_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                                                stream=True))
    assert all(c.choices and c.usage is None for c in chunks)


def test_n_samples_equal_offline_seeded_samples(plain_server, offline):
    reply = plain_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, n=3, temperature=1.0,
                                                          seed=1234, max_tokens=10)
    expected = offline_chat(offline, MESSAGES, n=3, temperature=1.0, seed=1234, max_tokens=10)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [o.text for o in expected.outputs]
    assert len({c.message.content for c in reply.choices}) > 1
    assert reply.usage.completion_tokens == sum(len(o.token_ids) for o in expected.outputs)


def test_n_samples_stream_to_their_own_index(plain_server):
    client = plain_server.client()
    args = dict(model=MODEL, prompt="Colours:", n=3, temperature=1.0, seed=5, max_tokens=8)
    whole = client.completions.create(**args)
    texts = ["", "", ""]
    for chunk in client.completions.create(stream=True, **args):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in whole.choices]


def test_seeded_requests_repeat_and_seeds_differ(plain_server):
    client = plain_server.client()

    def sample(seed):
        return client.completions.create(model=MODEL, prompt="Pick a word:", temperature=1.0, seed=seed,
                                         max_tokens=12).choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_logprobs_cover_every_token(plain_server):
    reply = plain_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                                          max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)  # greedy picks the most likely token
    text = plain_server.client().completions.create(model=MODEL, prompt="Hi", temperature=0, max_tokens=5,
                                                    logprobs=2)
    logprobs = text.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_stop_string_ends_the_answer_before_it(plain_server, offline):
    full = offline_chat(offline, MESSAGES, temperature=0, max_tokens=16, ignore_eos=True).outputs[0].text
    stop = next(c for c in full[3:] if c.isascii() and c.isalnum())  # clear of partial UTF-8 characters
    reply = plain_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                                          max_tokens=16, stop=[stop])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == full[: full.index(stop)]


def test_32_concurrent_streams_all_complete_with_their_own_output(plain_server, offline):
    prompts = [f"Request {i}: {'abcdefgh'[i % 8] * (1 + i % 5)}" for i in range(32)]
    expected = offline("plain").generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                                         use_tqdm=False)

    async def one(client, prompt):
        text, finish = "", None
        stream = await client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=8,
                                                 stream=True, extra_body={"ignore_eos": True})
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
                finish = choice.finish_reason or finish
        return text, finish

    async def main():
        client = plain_server.client(asynchronous=True)
        try:
            return await asyncio.gather(*(one(client, p) for p in prompts))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert [text for text, _ in results] == [e.outputs[0].text for e in expected]
    assert all(finish == "length" for _, finish in results)


def test_a_dropped_stream_is_aborted_and_frees_its_blocks(plain_server):
    idle = plain_server.metrics()
    assert idle["fastcot:num_requests_running"] == 0 and idle["fastcot:kv_cache_usage_perc"] == 0
    stream = plain_server.client().completions.create(model=MODEL, prompt="Go on forever:", max_tokens=200,
                                                      stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    busy = plain_server.metrics()
    assert busy["fastcot:num_requests_running"] == 1 and busy["fastcot:kv_cache_usage_perc"] > 0
    stream.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = plain_server.metrics()
        if after["fastcot:num_requests_running"] == 0 and after["fastcot:kv_cache_usage_perc"] == 0:
            break
        time.sleep(0.1)
    assert after["fastcot:num_requests_running"] == 0 and after["fastcot:kv_cache_usage_perc"] == 0
    # Generation stopped well short of max_tokens.
    assert after["fastcot:generation_tokens_total"] - busy["fastcot:generation_tokens_total"] < 150


def test_wrong_or_missing_api_key_is_401(plain_server):
    import openai

    for key in ("wrong-key", None):
        with pytest.raises(openai.AuthenticationError) as info:
            plain_server.client(api_key=key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        assert info.value.status_code == 401
        assert info.value.body["code"] == "invalid_api_key"
    status, body = plain_server.post_json("/v1/completions", {"model": MODEL, "prompt": "x"}, api_key=None)
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    assert plain_server.get("/health")[0] == 200  # probes need no key


def test_metrics_parse_and_count(plain_server):
    before = plain_server.metrics()
    plain_server.client().completions.create(model=MODEL, prompt="Count me", temperature=0, max_tokens=5,
                                             extra_body={"ignore_eos": True})
    after = plain_server.metrics()
    for name in ("fastcot:num_requests_running", "fastcot:num_requests_waiting", "fastcot:kv_cache_usage_perc",
                 "fastcot:prefix_cache_queries_total", "fastcot:prefix_cache_hits_total",
                 "fastcot:reasoning_tokens_total", "fastcot:time_to_first_token_seconds_count",
                 "fastcot:inter_token_latency_seconds_count", "fastcot:e2e_request_latency_seconds_count"):
        assert name in after, name
    assert after["fastcot:generation_tokens_total"] - before["fastcot:generation_tokens_total"] == 5
    assert after["fastcot:prompt_tokens_total"] - before["fastcot:prompt_tokens_total"] == len("Count me") + 1
    assert after["fastcot:e2e_request_latency_seconds_count"] - before["fastcot:e2e_request_latency_seconds_count"] == 1
    assert after["fastcot:prefix_cache_queries_total"] >= before["fastcot:prefix_cache_queries_total"] + 9
