"""`fastcot chat` replies and Ctrl-C: a real SIGINT to a chat subprocess fed through a pipe,
and in-process sessions over a stand-in engine whose stream can be interrupted at will."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

from pathlib import Path

import pytest

from fastcot import SamplingParams, StreamDelta
from fastcot.cli_chat import chat_session, stream_reply

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Pipe:
    """Collects a subprocess stream in a thread; `wait_for` polls for a substring."""

    def __init__(self, stream):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for chunk in iter(lambda: stream.read(1), ""):
            self.text += chunk

    def wait_for(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got so far:\n{self.text[-2000:]}")
            time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_ends_the_reply_and_keeps_the_session():
    """Two replies that would run for thousands of tokens, each ended by SIGINT; then the chat
    ends normally: no traceback, status 0, and the second reply streamed (the engine took it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastcot", "chat", "--max-tokens", "4000", "--ignore-eos", "--device", "cpu"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, bufsize=1,
    )
    out, err = Pipe(proc.stdout), Pipe(proc.stderr)
    try:
        for turn, message in enumerate(("hello", "and again")):
            before = len(out.text)
            proc.stdin.write(message + "\n")
            proc.stdin.flush()
            out.wait_for(lambda text: len(text) > before + 20)  # the reply is streaming
            proc.send_signal(signal.SIGINT)
            err.wait_for(lambda text: text.count("[interrupted") == turn + 1)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    err._thread.join(5)
    assert "Traceback" not in err.text and err.text.count("[stopping: Ctrl-C]") == 2
    assert "[length" not in err.text  # neither reply ran to its end


# --- in-process, over a stand-in engine ------------------------------------------------------

class FakeTokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(text)


class FakeLLM:
    """Streams `replies` (each a list of (text, kind)); `interrupt` says how a call is cut short:
    "raise" raises KeyboardInterrupt from inside the stream after two deltas, "signal" sends the
    process a real SIGINT there; `abort` ends the stream at its next step, as the engine does."""

    def __init__(self, replies, interrupt=None):
        self.replies, self.interrupt = list(replies), dict(interrupt or {})
        self.tokenizer = FakeTokenizer()
        self.prompts, self.aborted, self.calls = [], [], 0

    def chat_prompt(self, messages):
        return [dict(m) for m in messages]

    def abort(self, request_id):
        self.aborted.append(request_id)

    def generate_stream(self, prompt, params):
        self.prompts.append(prompt)
        call, self.calls = self.calls, self.calls + 1
        request_id = str(call)
        for i, (text, kind) in enumerate(self.replies[call]):
            if request_id in self.aborted:
                yield StreamDelta(request_id, 0, "", kind, "abort")
                return
            if i == 2 and self.interrupt.get(call) == "raise":
                raise KeyboardInterrupt
            if i == 2 and self.interrupt.get(call) == "signal":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handler runs at the next bytecode boundary
            yield StreamDelta(request_id, 0, text, kind)
        yield StreamDelta(request_id, 0, "", kind, "stop")


def reply(*texts, kind="answer"):
    return [(t, kind) for t in texts]


PARAMS = SamplingParams(max_tokens=50)


def test_keyboard_interrupt_from_the_stream_ends_only_that_reply():
    llm = FakeLLM([reply("a", "b", "c", "d"), reply("x", "y")], interrupt={0: "raise"})
    out, err = io.StringIO(), io.StringIO()
    messages = []
    assert chat_session(llm, PARAMS, messages, None, io.StringIO("one\ntwo\n\n"), out=out, err=err) == 0
    assert out.getvalue() == "ab\nxy\n"
    assert "[interrupted | ~2 tokens in" in err.getvalue() and "[stop | ~2 tokens in" in err.getvalue()
    assert messages == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "ab"},
                        {"role": "user", "content": "two"}, {"role": "assistant", "content": "xy"}]


def test_first_sigint_aborts_the_request_through_the_engine():
    llm = FakeLLM([reply("a", "b", "c", "d", "e")], interrupt={0: "signal"})
    out, err = io.StringIO(), io.StringIO()
    before = signal.getsignal(signal.SIGINT)
    samples, interrupted = stream_reply(llm, "p", PARAMS, out=out, err=err)
    assert interrupted and llm.aborted == ["0"]
    assert samples[0].finish_reason == "abort" and out.getvalue() == "abc\n"  # 'c' was on its way
    assert "[stopping: Ctrl-C]" in err.getvalue() and "[interrupted |" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is before  # the usual Ctrl-C is back outside replies


def test_thinking_is_marked_and_an_answerless_turn_is_left_out():
    llm = FakeLLM([reply("hmm", "...", kind="reasoning"), reply("think", kind="reasoning") + reply("42")])
    out, err = io.StringIO(), io.StringIO()
    messages = [{"role": "system", "content": "s"}]
    assert chat_session(llm, PARAMS, messages, "first", io.StringIO("second\n"), out=out, err=err) == 0
    assert out.getvalue() == "hmm...\nthink42\n"
    assert err.getvalue().count("[thinking]") == 2 and err.getvalue().count("[answer]") == 1
    assert "[the reply ended without an answer; this turn is left out of the conversation]" in err.getvalue()
    assert llm.prompts[1] == [{"role": "system", "content": "s"}, {"role": "user", "content": "second"}]
    assert messages[-1] == {"role": "assistant", "content": "42"}


def test_several_samples_print_each_when_it_ends():
    class TwoSamples(FakeLLM):
        def generate_stream(self, prompt, params):
            yield StreamDelta("0", 1, "B", "answer")
            yield StreamDelta("0", 0, "A", "answer")
            yield StreamDelta("0", 1, "", "answer", "length")
            yield StreamDelta("0", 0, "a", "answer")
            yield StreamDelta("0", 0, "", "answer", "stop")

    out, err = io.StringIO(), io.StringIO()
    samples, interrupted = stream_reply(TwoSamples([]), "p", SamplingParams(n=2, max_tokens=9), out=out, err=err)
    assert out.getvalue() == "B\nAa\n" and [s.text for s in samples] == ["Aa", "B"] and not interrupted
    assert "[0: stop, 1: length | ~3 tokens in" in err.getvalue() and "max_tokens=9" in err.getvalue()
