"""Interruption: an exception or KeyboardInterrupt anywhere in a call (inside a step too), or a
stream left unfinished, leaves the engine consistent: the call's requests aborted, every KV
block back in the pool, and the next call gives what a fresh engine gives."""

import random

import pytest

from fastcot import LLM, SamplingParams
from fastcot.engine.block_manager import BlockManager
from fastcot.engine.llm import _Progress
from fastcot.engine.model_runner import ModelRunner
from fastcot.engine.output_processor import SequenceOutput
from fastcot.engine.sampling import Sampler
from fastcot.engine.scheduler import Scheduler
from fastcot.models.llama import LlamaForCausalLM

NUM_BLOCKS = 12  # 192 tokens: the prompts below outgrow it, so sequences get preempted


@pytest.fixture(scope="module")
def path(llama_checkpoint):
    return str(llama_checkpoint[0])


def make_llm(path, **kwargs):
    return LLM(path, device="cpu", num_kv_blocks=NUM_BLOCKS, max_model_len=160, max_num_batched_tokens=24, **kwargs)


def workload(seed=0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 256) for _ in range(rng.randrange(2, 40))] for _ in range(5)]
    params = [SamplingParams(temperature=0, max_tokens=14, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=4, max_tokens=10, n=3, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=12, stop=["a", "b c"], ignore_eos=True),
              SamplingParams(temperature=1.0, seed=2, max_tokens=16, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0, max_tokens=9, ignore_eos=True, presence_penalty=0.5)]
    return prompts, params


def result(outputs):
    return [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outputs]


@pytest.fixture(scope="module")
def expected(path):
    return result(make_llm(path).generate(*workload(), use_tqdm=False))


def assert_clean(llm):
    engine = llm.engine
    assert not engine.has_unfinished_requests() and not engine.scheduler.running and not engine.scheduler.waiting
    assert llm.block_manager.num_free_blocks == NUM_BLOCKS and not llm.runner.rows
    engine.check_invariants()
    assert not llm._owned and not llm._outbox


class Interrupt:
    """Wrap `owner.name` to raise `exc` at its `at`-th call (counting from 1)."""

    def __init__(self, monkeypatch, owner, name, at, exc=KeyboardInterrupt):
        self.calls, self.at, self.exc = 0, at, exc
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                raise self.exc("injected")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


# Places a call can be interrupted: inside a step (scheduling, block accounting, the forward,
# sampling, output processing) and between steps (the progress bar of generate).
POINTS = [(Scheduler, "schedule"), (BlockManager, "allocate"), (BlockManager, "append_slot"),
          (ModelRunner, "_sync_tables"), (LlamaForCausalLM, "forward"), (Sampler, "__call__"),
          (SequenceOutput, "observe"), (_Progress, "step")]


@pytest.mark.parametrize("owner, name", POINTS, ids=[f"{o.__name__}.{n}" for o, n in POINTS])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_generate_interrupted_anywhere_then_the_next_call_works(path, expected, monkeypatch, owner, name, exc):
    llm = make_llm(path)
    rng = random.Random(f"{owner.__name__}.{name}")
    hits = 0
    for _ in range(2):  # two random points of the same place
        with monkeypatch.context() as patch:
            interrupt = Interrupt(patch, owner, name, at=rng.randrange(1, 12), exc=exc)
            try:
                out = llm.generate(*workload(), use_tqdm=name == "step")
            except (KeyboardInterrupt, RuntimeError) as caught:
                assert str(caught) == "injected"
                assert interrupt.calls == interrupt.at
                hits += 1
            else:  # the place was reached fewer times than `at`, or its failure ended one request
                assert interrupt.calls < interrupt.at or owner is SequenceOutput
                if owner is SequenceOutput:  # an Exception in one request's processing ends it alone
                    assert sum(any(c[2] == "error" for c in o) for o in result(out)) == 1
        assert_clean(llm)
        assert result(llm.generate(*workload(), use_tqdm=False)) == expected
        assert_clean(llm)
    assert hits or (owner is SequenceOutput and exc is RuntimeError)


@pytest.mark.parametrize("stop_after", [0, 1, 5, 23])
@pytest.mark.parametrize("how", ["break", "close", "raise"])
def test_a_stream_left_early_aborts_its_requests(path, expected, stop_after, how):
    llm = make_llm(path)
    stream = llm.generate_stream(*workload())
    if how == "break":
        for i, _ in enumerate(stream):
            if i == stop_after:
                break
        del stream
    elif how == "close":
        for _ in range(stop_after + 1):
            next(stream)
        stream.close()
    else:
        with pytest.raises(ValueError, match="consumer"):
            for i, _ in enumerate(llm.generate_stream(*workload())):
                if i == stop_after:
                    raise ValueError("the consumer failed")
        stream.close()  # never started: nothing to abort
    assert_clean(llm)
    assert result(llm.generate(*workload(), use_tqdm=False)) == expected
    assert_clean(llm)


def test_streams_consumed_in_turns_and_a_generate_call_between(path, expected):
    llm = make_llm(path)
    prompts, params = workload()
    streams = [llm.generate_stream(prompts[:2], params[:2]), llm.generate_stream(prompts[2:], params[2:])]
    texts = {}
    live = list(streams)
    while live:
        for stream in list(live):
            try:
                delta = next(stream)
            except StopIteration:
                live.remove(stream)
                continue
            key = (delta.request_id, delta.index)
            texts[key] = texts.get(key, "") + delta.text
        if len(texts) == 3:  # a whole generate call while both streams are paused
            assert result(llm.generate(prompts, params, use_tqdm=False)) == expected
    got = [[texts[str(r), i] for i in range(p.n)] for r, p in enumerate(params)]
    assert got == [[c[1] for c in o] for o in expected]
    assert_clean(llm)


def test_a_failed_step_drops_every_request(path, expected, monkeypatch):
    llm = make_llm(path)
    engine = llm.engine
    engine.add_request("other", [5, 6, 7], SamplingParams(max_tokens=50))
    with monkeypatch.context() as patch:
        Interrupt(patch, ModelRunner, "step", at=3, exc=MemoryError)
        with pytest.raises(MemoryError):
            llm.generate(*workload(), use_tqdm=False)
    assert engine.stats().num_failed_steps == 1 and not engine.has_unfinished_requests()
    assert_clean(llm)
    assert result(llm.generate(*workload(), use_tqdm=False)) == expected


def test_out_of_range_logprobs_are_refused_and_change_nothing(path, expected):
    llm = make_llm(path)
    with pytest.raises(ValueError, match=r"SamplingParams.logprobs=1000000 exceeds this engine's bound of 20"):
        llm.generate([[5, 6]], SamplingParams(logprobs=10**6), use_tqdm=False)
    assert_clean(llm)
    assert result(llm.generate(*workload(), use_tqdm=False)) == expected
