"""What a model-backed server cannot show on demand, with a scripted engine behind the real
application (uvicorn in a thread of this process, loopback, port 0): SSE keep-alive comments
while a request waits, a failure inside one request that fails it alone, an engine step that
raises, and a dropped non-streamed request being aborted."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest

uvicorn = pytest.importorskip("uvicorn")

from fastcot import SamplingParams  # noqa: E402
from fastcot.entrypoints.api_server import ServerOptions  # noqa: E402
from fastcot.entrypoints.app import build_server  # noqa: E402
from fastcot.entrypoints.async_engine import SampleDelta, Update  # noqa: E402
from fastcot.models import load_tokenizer  # noqa: E402

# Scripted behaviours, chosen by the request's seed.
SLOW_START, BAD_OUTPUT, BAD_STEP, ENDLESS = 101, 102, 103, 104


class ScriptedEngine:
    """Emits "x" once per step (50 steps a second) until `max_tokens`."""

    def __init__(self):
        self.max_model_len = 128
        self.config = SimpleNamespace(vocab_size=261)
        self.thinking = None
        self.requests: dict[str, list] = {}
        self.aborted: list[str] = []
        self.lock = threading.Lock()

    def get_tokenizer(self):
        return load_tokenizer("tiny-random")

    def add_request(self, request_id, prompt, params):
        wake = time.monotonic() + (0.6 if params.seed == SLOW_START else 0)
        self.requests[request_id] = [params, 0, wake]

    def abort_request(self, request_id):
        self.aborted.append(request_id)
        self.requests.pop(request_id, None)

    def has_unfinished_requests(self):
        return bool(self.requests)

    def stats(self):
        return SimpleNamespace(num_running_requests=len(self.requests))

    def step(self):
        time.sleep(0.02)
        if any(params.seed == BAD_STEP for params, _, _ in self.requests.values()):
            self.requests = {rid: r for rid, r in self.requests.items() if r[0].seed != BAD_STEP}
            raise RuntimeError("scripted step failure")
        outputs = []
        for rid, state in list(self.requests.items()):
            params, done, wake = state
            if time.monotonic() < wake:
                continue
            state[1] = done = done + 1
            finished = done == params.max_tokens and params.seed != ENDLESS
            if finished:
                del self.requests[rid]
            outputs.append(SimpleNamespace(request_id=rid, params=params, finished=finished))
        return outputs


def read_output(output):
    if output.params.seed == BAD_OUTPUT:
        raise KeyError("scripted output failure")
    delta = SampleDelta(0, "x", "", 1, 0, None, "length" if output.finished else None)
    return Update((delta,), output.finished, 1)


@pytest.fixture(scope="module")
def server():
    engine = ScriptedEngine()
    app = build_server(engine, SamplingParams, served_model_names=["scripted"], options=ServerOptions(),
                       keepalive_s=0.1, read_output=read_output)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", engine=engine)
    server.should_exit = True
    thread.join(15)


def post(server, body, timeout=30):
    request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def completion(seed, max_tokens=5, **fields):
    return {"model": "scripted", "prompt": "hi", "seed": seed, "max_tokens": max_tokens, **fields}


def test_a_waiting_stream_gets_keepalive_comments(server):
    status, text = post(server, completion(SLOW_START, stream=True))
    assert status == 200
    events = text.split("\n\n")
    first_data = next(i for i, e in enumerate(events) if e.startswith("data: {"))
    assert events[:first_data].count(": keep-alive") >= 3  # 0.6 s waiting, a comment every 0.1 s
    assert events[-2:] == ["data: [DONE]", ""]
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events if e.startswith("data: {")) == "xxxxx"


def test_a_failure_in_one_request_fails_it_alone(server):
    results = {}

    def run(name, body):
        results[name] = post(server, body)

    threads = [threading.Thread(target=run, args=("good", completion(1, max_tokens=20))),
               threading.Thread(target=run, args=("bad", completion(BAD_OUTPUT))),
               threading.Thread(target=run, args=("bad stream", completion(BAD_OUTPUT, stream=True)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    status, text = results["bad"]
    assert status == 500 and "scripted output failure" in json.loads(text)["error"]["message"]
    status, text = results["bad stream"]
    assert status == 200 and '"error"' in text and text.endswith("data: [DONE]\n\n")
    assert text.count("data: [DONE]") == 1
    status, text = results["good"]
    assert status == 200 and json.loads(text)["choices"][0]["text"] == "x" * 20


def test_a_failing_step_fails_the_requests_in_flight_and_serving_goes_on(server):
    status, text = post(server, completion(BAD_STEP))
    assert status == 500 and "scripted step failure" in text
    status, text = post(server, completion(2, max_tokens=3))
    assert status == 200 and json.loads(text)["choices"][0]["text"] == "xxx"
    status, _ = post(server, {})
    assert status == 400


def test_a_client_gone_from_a_whole_response_request_is_aborted(server):
    import socket

    body = json.dumps(completion(ENDLESS, max_tokens=100)).encode()
    with socket.create_connection((server.url.split("//")[1].split(":")[0], int(server.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while not server.engine.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.engine.requests
    deadline = time.monotonic() + 10  # the server looks for the client once a second
    while server.engine.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.engine.requests and server.engine.aborted
