"""`fastcot.LLM` end to end on CPU: greedy equals transformers, preemption and prefix caching
change nothing, sampling and stop rules behave, bad requests fail alone."""

import pytest
import torch
from helpers import load_test_module

import fastcot
import fastcot.models
from fastcot import LLM, SamplingParams

pytest.importorskip("transformers")
hf = load_test_module("models/hf_checkpoints.py")
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(llama_checkpoint):
    return llama_checkpoint


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (5, 16, 37, 1, 22)]


def generate_ids(llm, prompts, params=GREEDY):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def test_greedy_matches_transformers(checkpoint, prompts):
    path, hf_model = checkpoint
    llm = LLM(str(path), device="cpu", num_kv_blocks=64)
    expected, _ = hf.hf_greedy(hf_model, prompts, 10)
    assert generate_ids(llm, prompts) == expected


def test_preemption_and_prefix_cache_change_nothing(checkpoint, prompts):
    path, _ = checkpoint
    roomy = generate_ids(LLM(str(path), device="cpu", num_kv_blocks=64), prompts)
    # 6 blocks of 16: the admitted sequences outgrow the cache and the newest get preempted.
    tight = LLM(str(path), device="cpu", num_kv_blocks=6, max_model_len=96)
    assert generate_ids(tight, prompts) == roomy
    assert tight.scheduler.num_preemptions > 0
    # The same prompts again hit the prefix cache.
    again = LLM(str(path), device="cpu", num_kv_blocks=64)
    first = generate_ids(again, prompts)
    free_before = again.block_manager.num_free_blocks
    assert generate_ids(again, prompts) == first == roomy
    assert again.block_manager.num_free_blocks == free_before  # everything released


def test_chunked_prefill_changes_nothing(checkpoint, prompts):
    path, hf_model = checkpoint
    expected, _ = hf.hf_greedy(hf_model, prompts, 10)
    # 7-token chunks: prompts are split over several steps, interleaved with decode steps.
    llm = LLM(str(path), device="cpu", num_kv_blocks=64, max_num_batched_tokens=7)
    assert generate_ids(llm, prompts) == expected


def test_an_undersized_cache_is_refused_at_construction(checkpoint, prompts):
    path, _ = checkpoint
    with pytest.raises(ValueError, match=r"cannot hold one sequence of max_model_len=512: it has 3 blocks of 16 "
                                         r"tokens \(48 tokens.*num_kv_blocks >= 32.*max_model_len to at most 48"):
        LLM(str(path), device="cpu", num_kv_blocks=3)
    llm = LLM(str(path), device="cpu", num_kv_blocks=3, max_model_len=48)
    with pytest.raises(ValueError, match="max_model_len is 48"):  # refused before anything is queued
        llm.generate([prompts[0], prompts[2] + prompts[1]], GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    outs = llm.generate([prompts[2], prompts[0]], GREEDY, use_tqdm=False)
    assert [o.outputs[0].finish_reason for o in outs] == ["length", "length"]


def test_n_samples_share_the_prompt_and_are_reproducible(checkpoint, prompts):
    path, _ = checkpoint
    llm = LLM(str(path), device="cpu", num_kv_blocks=64)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=11, ignore_eos=True)
    first = [c.token_ids for c in llm.generate(prompts[2], params, use_tqdm=False)[0].outputs]
    # Seeded samples do not depend on what else is in the batch.
    mixed = llm.generate([prompts[0], prompts[2]], [GREEDY, params], use_tqdm=False)
    assert [c.token_ids for c in mixed[1].outputs] == first
    assert len({tuple(t) for t in first}) > 1  # the samples differ from each other
    greedy_n = SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True)
    outs = llm.generate(prompts[2], greedy_n, use_tqdm=False)[0].outputs
    assert outs[0].token_ids == outs[1].token_ids == outs[2].token_ids


def test_stop_rules(checkpoint, prompts):
    path, _ = checkpoint
    llm = LLM(str(path), device="cpu", num_kv_blocks=64)
    free = generate_ids(llm, [prompts[1]])[0]
    stop_id = free[4]
    out = llm.generate(prompts[1], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_id]),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.token_ids == free[: free.index(stop_id) + 1]
    out = llm.generate(prompts[1], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason in ("length", "stop") and len(out.token_ids) <= 3


def test_stop_strings_and_streaming_on_tiny_random():
    llm = LLM("tiny-random", device="cpu", num_kv_blocks=64, max_model_len=1024)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    full = llm.generate("Hello", params, use_tqdm=False)[0].outputs[0]
    deltas = "".join(d.text for d in llm.generate_stream("Hello", params))
    assert deltas == full.text
    if len(full.text) >= 4:
        stop = full.text[2:4]
        cut = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[stop]),
                           use_tqdm=False)[0].outputs[0]
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_chat_applies_the_template():
    llm = LLM("tiny-random", device="cpu", num_kv_blocks=64, max_model_len=1024)
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(out) == 1 and out[0].prompt_token_ids and out[0].outputs[0].token_ids


def test_bad_requests():
    llm = LLM("tiny-random", device="cpu", num_kv_blocks=16, max_model_len=64)
    with pytest.raises(ValueError, match="must not be empty"):
        llm.generate([""], use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len is 64"):
        llm.generate([[5] * 64], use_tqdm=False)
    with pytest.raises(TypeError, match="a prompt must be a str, a list of token ids"):
        llm.generate([3.5], use_tqdm=False)
    with pytest.raises(ValueError, match="got 2 sampling_params for 1 prompts"):
        llm.generate(["a"], [SamplingParams(), SamplingParams()], use_tqdm=False)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM("tiny-random", device="cpu", kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="max_model_len"):
        LLM("tiny-random", device="cpu", max_model_len=10**9)


def test_exports():
    assert fastcot.LLM is LLM and fastcot.SamplingParams is SamplingParams


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager():
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = ["Once upon a time", "The capital of France", "1 2 3"]
    outs = []
    for eager in (True, False):
        llm = LLM("tiny-random", device="cuda", num_kv_blocks=256, max_num_seqs=8, enforce_eager=eager)
        outs.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        if not eager:
            assert llm.runner.graphs is not None and llm.runner.graphs.graphs  # graphs were captured
    assert outs[0] == outs[1]


def test_graph_buckets_cover_every_batch_size():
    from fastcot.engine.cuda_graphs import batch_buckets

    for max_batch in (1, 3, 16, 100, 256):
        buckets = batch_buckets(max_batch)
        assert buckets == sorted(set(buckets)) and buckets[-1] == max_batch
        assert all(any(b >= n for b in buckets) for n in range(1, max_batch + 1))


def test_forked_samples_equal_unshared_runs(checkpoint, prompts, monkeypatch):
    # n samples share the prompt's blocks (a copy of the partly filled one on first write);
    # the same samples run as separate requests, with nothing shared, give the same tokens.
    path, _ = checkpoint
    prompt = prompts[2]  # 37 tokens: the last prompt block is partly filled
    params = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=11, ignore_eos=True)
    shared = LLM(str(path), device="cpu", num_kv_blocks=64)
    forked = [c.token_ids for c in shared.generate(prompt, params, use_tqdm=False)[0].outputs]
    alone = LLM(str(path), device="cpu", num_kv_blocks=64)
    alone.block_manager.enable_prefix_caching = False
    keys = iter([fastcot.engine.sampling.request_key(11, i) for i in range(4)])
    monkeypatch.setattr(fastcot.engine.llm_engine, "request_key", lambda seed, index: next(keys))
    single = SamplingParams(n=1, temperature=1.0, max_tokens=12, seed=11, ignore_eos=True)
    unshared = [o.outputs[0].token_ids for o in alone.generate([prompt] * 4, single, use_tqdm=False)]
    assert unshared == forked and len({tuple(t) for t in forked}) > 1


def test_a_failing_request_ends_alone_with_an_error(checkpoint, prompts, monkeypatch):
    # A failure in one request's own output processing ends that request, not the batch.
    path, _ = checkpoint
    llm = LLM(str(path), device="cpu", num_kv_blocks=64)
    from fastcot.engine.output_processor import SequenceOutput

    observe = SequenceOutput.observe

    def flaky(self, token):
        if self.seq.request_id == "1" and self.seq.num_output == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a bad byte")
        return observe(self, token)

    monkeypatch.setattr(SequenceOutput, "observe", flaky)
    ends = {d.request_id: d.finish_reason for d in llm.generate_stream(prompts[:3], GREEDY) if d.finish_reason}
    assert ends == {"0": "length", "1": "error", "2": "length"}
    outs = llm.generate(prompts[:3], GREEDY, use_tqdm=False)  # ids 3, 4, 5: none fails
    assert [o.outputs[0].finish_reason for o in outs] == ["length"] * 3
    monkeypatch.setattr(SequenceOutput, "observe", observe)
    failing = llm.generate(prompts[1:2], GREEDY, use_tqdm=False)
    assert failing[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    assert llm.block_manager.num_free_blocks == 64


@pytest.mark.parametrize("budget, prompt_len", [(1, 2), (8, 9), (4, 9), (16, 17), (7, 7), (3, 10)])
def test_n_samples_survive_chunks_ending_one_token_short(budget, prompt_len):
    # A prefill chunk that ends one token before the prompt's end used to make the sequence
    # decode-ready: its last prompt token went through a decode step and the other samples,
    # released only by a prefill that reaches the end, were lost (no tokens, no finish reason).
    llm = LLM("tiny-random", device="cpu", num_kv_blocks=64, max_model_len=1024, max_num_batched_tokens=budget)
    prompt = list(range(10, 10 + prompt_len))
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    alone = llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].token_ids
    llm.block_manager.reset_prefix_cache()
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, n=3)
    outs = llm.generate([prompt], params, use_tqdm=False)[0].outputs
    assert [(c.token_ids, c.finish_reason) for c in outs] == [(alone, "length")] * 3
    llm.block_manager.reset_prefix_cache()
    ends = [d.index for d in llm.generate_stream([prompt], params) if d.finish_reason == "length"]
    assert sorted(ends) == [0, 1, 2]


def test_n_samples_survive_a_prefix_hit_then_a_chunk_one_token_short():
    # 64 cached tokens, then a 32-token chunk: 96 of a 97-token prompt computed.
    llm = LLM("tiny-random", device="cpu", num_kv_blocks=64, max_model_len=1024, max_num_batched_tokens=32)
    prompt = [(7 * i) % 200 + 3 for i in range(97)]
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate([prompt[:70]], greedy, use_tqdm=False)  # caches 4 blocks of 16
    alone = llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].token_ids
    llm.block_manager.reset_prefix_cache()
    llm.generate([prompt[:70]], greedy, use_tqdm=False)
    outs = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, n=2),
                        use_tqdm=False)[0].outputs
    assert [(c.token_ids, c.finish_reason) for c in outs] == [(alone, "length")] * 2

