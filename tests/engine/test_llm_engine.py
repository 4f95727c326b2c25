"""`fastcot.LLMEngine` driven step by step: requests join while others run, step outputs carry
deltas that add up to the final outputs, output kinds, aborts, statistics, bad requests."""

import random

import pytest

import fastcot
from fastcot import LLM, LLMEngine, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def path(llama_checkpoint):
    return str(llama_checkpoint[0])


def prompts(count, seed=0, low=1, high=40):
    rng = random.Random(seed)
    return [[rng.randrange(3, 256) for _ in range(rng.randrange(low, high))] for _ in range(count)]


def drain(engine, outputs=None):
    """Step until nothing is left; every output per request id, in order."""
    outputs = {} if outputs is None else outputs
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        engine.check_invariants()
    return outputs


def test_requests_added_between_steps_equal_one_generate_call(path):
    ps = prompts(7, seed=1)
    params = [GREEDY, SamplingParams(temperature=0.9, seed=3, max_tokens=15, ignore_eos=True, n=2)] * 4
    expected = LLM(path, device="cpu", num_kv_blocks=64).generate(ps, params[:7], use_tqdm=False)
    engine = LLMEngine(path, device="cpu", num_kv_blocks=64, max_num_batched_tokens=16)
    outputs, arrivals = {}, list(range(7))
    step = 0
    while arrivals or engine.has_unfinished_requests():
        if arrivals and step % 3 == 0:  # a new request every third step, while others decode
            i = arrivals.pop(0)
            engine.add_request(f"r{i}", ps[i], params[i])
            assert engine.get_num_unfinished_requests() == len(outputs_pending(outputs, i))
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        engine.check_invariants()
        step += 1
    for i, exp in enumerate(expected):
        final = outputs[f"r{i}"][-1]
        assert final.finished and [c.token_ids for c in final.outputs] == [c.token_ids for c in exp.outputs]
        assert [c.text for c in final.outputs] == [c.text for c in exp.outputs]
    assert engine.block_manager.num_free_blocks == 64


def outputs_pending(outputs, newest):
    """The ids of requests added so far that have not reported finished."""
    done = {rid for rid, outs in outputs.items() if outs[-1].finished}
    return [f"r{i}" for i in range(newest + 1) if f"r{i}" not in done]


@pytest.mark.parametrize("kind", ["cumulative", "delta", "final_only"])
def test_step_outputs_add_up_to_the_final_output(path, kind):
    engine = LLMEngine(path, device="cpu", num_kv_blocks=64, max_num_batched_tokens=8)
    ps = prompts(3, seed=2)
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=20, n=2, logprobs=2, output_kind=kind)
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, params)
    outputs = drain(engine)
    reference = LLM(path, device="cpu", num_kv_blocks=64).generate(ps, params, use_tqdm=False)
    for i, ref in enumerate(reference):
        outs = outputs[str(i)]
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        if kind == "final_only":
            assert len(outs) == 1
        final = outs[-1]
        assert final.metrics is not None and final.metrics.time_to_first_token > 0
        for index, expected in enumerate(ref.outputs):
            samples = [o.outputs[index] for o in outs]
            assert sum(s.finished_this_step for s in samples) == 1  # a finish is handed out once
            if kind == "final_only":
                got = samples[-1]
            else:
                assert "".join(s.delta_text for s in samples) == expected.text
                assert sum((s.delta_token_ids for s in samples), []) == expected.token_ids
                assert_logprobs_equal(sum((s.delta_logprobs for s in samples), []), expected.logprobs)
                got = samples[-1]
                if kind == "cumulative":  # each step's cumulative fields: the deltas so far
                    for j, s in enumerate(samples):
                        assert s.token_ids == sum((t.delta_token_ids for t in samples[: j + 1]), [])
                        assert s.text == "".join(t.delta_text for t in samples[: j + 1])
            if kind == "delta":
                assert got.token_ids == samples[-1].delta_token_ids
            else:
                assert (got.text, got.token_ids, got.finish_reason) == (expected.text, expected.token_ids,
                                                                        expected.finish_reason)
                assert got.cumulative_logprob == pytest.approx(expected.cumulative_logprob, abs=1e-4)


def assert_logprobs_equal(got, expected):
    """Same tokens, ranks and texts; values equal up to float32 rounding (batches differ)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert [(t, lp.rank, lp.decoded_token) for t, lp in g.items()] == \
            [(t, lp.rank, lp.decoded_token) for t, lp in e.items()]
        assert [lp.logprob for lp in g.values()] == pytest.approx([lp.logprob for lp in e.values()], abs=1e-5)


def test_cumulative_fields_read_late_keep_their_step(path):
    engine = LLMEngine(path, device="cpu", num_kv_blocks=64)
    engine.add_request("a", prompts(1)[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    seen = [out.outputs[0] for out in sum(drain(engine).values(), [])]
    lengths = [len(c.token_ids) for c in seen]  # read only now, after the last step
    assert lengths == list(range(1, 9))
    assert all(seen[i].text == seen[-1].text[: len(seen[i].text)] for i in range(8))


def test_abort_request_ends_the_request_and_frees_its_blocks(path):
    engine = LLMEngine(path, device="cpu", num_kv_blocks=64)
    for i, p in enumerate(prompts(3, seed=3)):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, n=2))
    for _ in range(4):
        engine.step()
    aborted = engine.abort_request(["1", "missing"])
    assert [o.request_id for o in aborted] == ["1"] and aborted[0].finished
    assert [c.finish_reason for c in aborted[0].outputs] == ["abort", "abort"]
    assert all(c.finished_this_step for c in aborted[0].outputs) and aborted[0].outputs[0].token_ids
    assert engine.get_num_unfinished_requests() == 2
    outputs = drain(engine)
    assert "1" not in outputs or not outputs["1"][-1].finished  # never reported again
    assert engine.abort_request("0") == [] and engine.block_manager.num_free_blocks == 64
    assert engine.stats().finished == {"abort": 2, "length": 4}


def test_abort_of_a_waiting_request_with_pending_samples(path):
    engine = LLMEngine(path, device="cpu", num_kv_blocks=64, max_num_batched_tokens=4)
    engine.add_request("a", prompts(1, low=30)[0], SamplingParams(max_tokens=5, n=3))
    engine.step()  # the first chunk of the prompt; the other samples wait for its end
    (out,) = engine.abort_request("a")
    assert [c.finish_reason for c in out.outputs] == ["abort"] * 3 and [c.token_ids for c in out.outputs] == [[]] * 3
    assert not engine.has_unfinished_requests() and engine.block_manager.num_free_blocks == 64
    engine.check_invariants()


def test_stats(path):
    engine = LLMEngine(path, device="cpu", num_kv_blocks=64, max_num_seqs=2)
    p = prompts(1, low=35)[0]
    for i in range(3):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    engine.step()
    stats = engine.stats()
    assert (stats.num_running_requests, stats.num_waiting_requests) == (2, 1)
    assert (stats.num_running_seqs, stats.num_waiting_seqs) == (2, 1)
    assert 0 < stats.kv_cache_usage < 1 and stats.num_kv_blocks == 64
    drain(engine)
    stats = engine.stats()
    assert stats.prompt_tokens == 3 * len(p) and stats.generation_tokens == 18
    # The first two prompts are admitted together (no hits), the third hits their full blocks.
    assert stats.prefix_cache_queries == 3 * len(p) and stats.prefix_cache_hits == 16 * ((len(p) - 1) // 16)
    assert stats.kv_cache_usage == 0 and stats.finished == {"length": 3} and stats.num_failed_steps == 0


def test_bad_requests_queue_nothing(path):
    engine = LLMEngine.from_args(path, device="cpu", num_kv_blocks=64, max_logprobs=5)
    engine.add_request("a", [5, 6], GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("a", [5, 6], GREEDY)
    with pytest.raises(TypeError, match="request_id must be a str"):
        engine.add_request(7, [5, 6], GREEDY)
    with pytest.raises(ValueError, match=r"SamplingParams.logprobs=6 exceeds this engine's bound of 5"):
        engine.add_request("b", [5, 6], SamplingParams(logprobs=6))
    with pytest.raises(ValueError, match=r"SamplingParams.prompt_logprobs=9 exceeds"):
        engine.add_request("b", [5, 6], SamplingParams(prompt_logprobs=9))
    params = SamplingParams()
    params.n = 0  # set after construction: validated again when added
    with pytest.raises(ValueError, match=r"SamplingParams.n must be an int >= 1"):
        engine.add_request("b", [5, 6], params)
    with pytest.raises(TypeError, match="params must be SamplingParams"):
        engine.add_request("b", [5, 6], {"temperature": 0})
    assert engine.get_num_unfinished_requests() == 1
    assert engine.get_tokenizer() is engine.tokenizer and fastcot.LLMEngine is LLMEngine
    assert drain(engine)["a"][-1].outputs[0].finish_reason == "length"
