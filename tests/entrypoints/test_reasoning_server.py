"""A reasoning model behind `fastcot serve` (tiny Llama with `<think>` tokens whose chat template
opens the thinking section): the thinking in `reasoning_content` and `reasoning`, the answer in
`content`, reasoning tokens in usage, streamed reasoning before the answer, thinking budgets,
`reasoning_effort` and `chat_template_kwargs.enable_thinking`, all equal to offline `LLM`."""

import pytest

from fastcot import SamplingParams

MODEL = "tiny-reasoner"
MESSAGES = [{"role": "user", "content": "What is 6 x 7?"}]


def offline_chat(offline, messages=MESSAGES, template_kwargs=None, **params):
    llm = offline("reasoning")
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False,
                                               **(template_kwargs or {}))
    return llm.generate([list(prompt)], SamplingParams(**params), use_tqdm=False)[0].outputs[0]


def test_thinking_and_answer_are_split_with_reasoning_usage(reasoning_server, offline):
    reply = reasoning_server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=14, extra_body={"thinking_token_budget": 5})
    expected = offline_chat(offline, temperature=0, max_tokens=14, thinking_budget=5)
    message = reply.choices[0].message
    assert expected.reasoning_text and expected.text  # the test must see both parts
    assert message.reasoning_content == message.reasoning == expected.reasoning_text
    assert message.content == expected.text
    details = reply.usage.completion_tokens_details
    assert details.reasoning_tokens == expected.num_reasoning_tokens == 5
    assert reply.usage.completion_tokens == len(expected.token_ids)


def test_streamed_reasoning_comes_first_in_both_fields(reasoning_server):
    client = reasoning_server.client()
    args = dict(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=14,
                extra_body={"thinking_token_budget": 5})
    whole = client.chat.completions.create(**args).choices[0].message
    kinds, reasoning, content = [], "", ""
    for chunk in client.chat.completions.create(stream=True, **args):
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            assert extra["reasoning"] == extra["reasoning_content"]
            reasoning += extra["reasoning_content"]
            kinds.append("reasoning")
        if delta.content:
            content += delta.content
            kinds.append("content")
    assert reasoning == whole.reasoning_content and content == whole.content
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # no reasoning after the answer began
    assert "reasoning" in kinds and "content" in kinds


def test_streamed_usage_counts_reasoning_tokens(reasoning_server):
    chunks = list(reasoning_server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10, stream=True,
        stream_options={"include_usage": True}, extra_body={"thinking_token_budget": 3}))
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3


def test_enable_thinking_false_gives_only_an_answer(reasoning_server, offline):
    reply = reasoning_server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=8,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    expected = offline_chat(offline, template_kwargs={"enable_thinking": False}, temperature=0, max_tokens=8)
    message = reply.choices[0].message
    assert message.reasoning_content is None and message.content == expected.text
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("effort", ["low", "high"])
def test_reasoning_effort_sets_a_budget_that_max_tokens_caps(reasoning_server, offline, effort):
    # Budgets of 1024/8192 tokens cannot bind within 8 tokens: all of them are thinking.
    reply = reasoning_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                                              max_tokens=8, reasoning_effort=effort)
    expected = offline_chat(offline, temperature=0, max_tokens=8)
    assert reply.choices[0].message.reasoning_content == expected.reasoning_text
    assert reply.usage.completion_tokens_details.reasoning_tokens == expected.num_reasoning_tokens


def test_bad_reasoning_effort_is_400(reasoning_server):
    status, reply = reasoning_server.post_json("/v1/chat/completions", {
        "model": MODEL, "messages": MESSAGES, "reasoning_effort": "extreme"})
    assert status == 400 and reply["error"]["param"] == "reasoning_effort"


def test_completions_carry_reasoning_too(reasoning_server, offline):
    prompt = "Question: 6 x 7?\n<think>\n"
    reply = reasoning_server.client().completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=10,
                                                         extra_body={"thinking_token_budget": 4, "ignore_eos": True})
    expected = offline("reasoning").generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                                                                      thinking_budget=4), use_tqdm=False)[0]
    choice = reply.choices[0]
    assert choice.text == expected.outputs[0].text
    assert choice.model_extra["reasoning_content"] == expected.outputs[0].reasoning_text
    assert reply.usage.completion_tokens_details.reasoning_tokens == 4


def test_include_reasoning_false_leaves_the_fields_out_but_counts_the_tokens(reasoning_server):
    reply = reasoning_server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10,
        extra_body={"thinking_token_budget": 3, "include_reasoning": False})
    message = reply.choices[0].message
    assert message.reasoning_content is None and (message.model_extra or {}).get("reasoning") is None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 3


def test_logprobs_cover_tokens_the_budget_forced(reasoning_server, offline):
    reply = reasoning_server.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10, logprobs=True, top_logprobs=2,
        extra_body={"thinking_token_budget": 3, "ignore_eos": True})
    content = reply.choices[0].logprobs.content
    expected = offline_chat(offline, temperature=0, max_tokens=10, thinking_budget=3, ignore_eos=True)
    assert len(content) == len(expected.token_ids) == 10
    # The budget forced </think> and the answer lead-in "\n\n": not sampled, so no model logprob.
    assert [entry.token for entry in content[3:6]] == ["</think>", "\n", "\n"]
    assert [entry.logprob for entry in content[3:6]] == [-9999.0] * 3
    assert all(-100 < entry.logprob <= 0 for i, entry in enumerate(content) if not 3 <= i < 6)
    assert all(len(entry.top_logprobs) == 2 for entry in content)
