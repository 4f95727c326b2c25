"""Every invalid request gets its status with an OpenAI-style error body naming the problem
(raw HTTP, so that malformed bodies can be sent), and the server keeps serving."""

import json

import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GOOD_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def with_fields(base, **fields):
    return {**base, **fields}


CASES = [
    # (id, path, body, status, param, words in the message)
    ("unknown model", CHAT, with_fields(GOOD_CHAT, model="gpt-5"), 400, "model", "does not exist"),
    ("negative temperature", CHAT, with_fields(GOOD_CHAT, temperature=-1), 400, "temperature", "temperature"),
    ("top_p above 1", CHAT, with_fields(GOOD_CHAT, top_p=2), 400, "top_p", "top_p"),
    ("n too large", CHAT, with_fields(GOOD_CHAT, n=17), 400, "n", "at most 16"),
    ("n zero", CHAT, with_fields(GOOD_CHAT, n=0), 400, "n", "n"),
    ("max_tokens not an int", CHAT, with_fields(GOOD_CHAT, max_tokens="lots"), 400, "max_tokens", "max_tokens"),
    ("no messages", CHAT, with_fields(GOOD_CHAT, messages=[]), 400, "messages", "messages"),
    ("bad role", CHAT, with_fields(GOOD_CHAT, messages=[{"role": "robot", "content": "x"}]), 400,
     "messages.0.role", "role"),
    ("image content", CHAT, with_fields(GOOD_CHAT, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]), 400, "messages.0.content", "text"),
    ("prompt too long", COMPLETIONS, {"model": "tiny", "prompt": "x" * 300}, 400, "prompt", "context length"),
    ("prompt plus max_tokens too long", CHAT, with_fields(GOOD_CHAT, max_tokens=250), 400, "max_tokens",
     "context length"),
    ("token id out of vocabulary", COMPLETIONS, {"model": "tiny", "prompt": [1, 5000]}, 400, "prompt", "[0, 261)"),
    ("empty prompt", COMPLETIONS, {"model": "tiny", "prompt": ""}, 400, "prompt", "empty"),
    ("missing prompt", COMPLETIONS, {"model": "tiny"}, 400, "prompt", "required"),
    ("tools", CHAT, with_fields(GOOD_CHAT, tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools",
     "not supported"),
    ("thinking budget on a model that does not think", CHAT, with_fields(GOOD_CHAT, thinking_token_budget=4), 400,
     "thinking_token_budget", "reasoning model"),
    ("top_logprobs too large", CHAT, with_fields(GOOD_CHAT, logprobs=True, top_logprobs=50), 400, "top_logprobs",
     "20"),
    ("reserved chat_template_kwargs", CHAT, with_fields(GOOD_CHAT, chat_template_kwargs={"tokenize": False}), 400,
     "chat_template_kwargs", "tokenize"),
    ("body is a list", CHAT, [GOOD_CHAT], 400, None, "JSON object"),
]


@pytest.mark.parametrize("path, body, status, param, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_request_gets_its_error(plain_server, path, body, status, param, words):
    got, reply = plain_server.post_json(path, body)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"]
    assert "Traceback" not in error["message"]


def test_malformed_json_is_400(plain_server):
    status, reply = plain_server.post_json(CHAT, b'{"model": "tiny", "messages": [')
    assert status == 400 and reply["error"]["code"] == "invalid_json"


def test_oversized_body_is_413(plain_server):
    body = json.dumps(with_fields(GOOD_CHAT, messages=[{"role": "user", "content": "x" * (9 * 2**20)}])).encode()
    status, reply = plain_server.post_json(CHAT, body)
    assert status == 413 and reply["error"]["code"] == "request_too_large"


def test_unknown_route_and_method_get_error_bodies(plain_server):
    status, raw = plain_server.get("/v1/embeddings")
    assert status == 404 and "error" in json.loads(raw)
    status, raw = plain_server.request("GET", CHAT, headers={"Authorization": "Bearer test-key"})
    assert status == 405 and "error" in json.loads(raw)


def test_openai_client_raises_bad_request(plain_server):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        plain_server.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                      temperature=-3)
    assert info.value.status_code == 400 and info.value.body["param"] == "temperature"


def test_the_server_still_serves_after_errors(plain_server):
    for _, path, body, *_ in CASES[:5]:
        plain_server.post_json(path, body)
    status, reply = plain_server.post_json(CHAT, GOOD_CHAT)
    assert status == 200 and reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert "Traceback" not in plain_server.log()
