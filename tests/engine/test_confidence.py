"""Path confidence on the device (SamplingParams.confidence_*): token and group confidences
against a hand computation from the logits, the low-confidence stop (its token, its blocks),
and the samples and batches that share the state."""

import dataclasses
import math
import os
import random

import pytest
import torch

import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.engine.sampling import token_confidence

EOS = 257


class TableModel(torch.nn.Module):
    """Logits are a fixed random table indexed by position (whatever the tokens), so the
    distribution at every output index is known in advance."""

    def __init__(self, config, table):
        super().__init__()
        self.config = config
        self.table = table
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return positions

    def compute_logits(self, hidden):
        return self.table[hidden.long()].clone()


def make_llm(table, *, num_kv_blocks=256, block_size=4, max_num_seqs=256):
    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), num_hidden_layers=1,
                                 max_position_embeddings=table.shape[0])
    return LLM.from_model(TableModel(config, table), fastcot.models.load_tokenizer("tiny-random"), device="cpu",
                          num_kv_blocks=num_kv_blocks, block_size=block_size, max_model_len=table.shape[0],
                          max_num_seqs=max_num_seqs)


def random_table(seed, positions=160, vocab=261, scale=None):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(positions, 1, generator=g) * 6 if scale is None else scale
    return torch.randn(positions, vocab, generator=g) * scale


def hand(table, prompt_len, num_tokens, k, window, threshold=None):
    """(token confidences, group confidences, lowest, stop index) in float64, by definition."""
    logprobs = table[prompt_len - 1: prompt_len - 1 + num_tokens].double().log_softmax(dim=1)
    tokens = [-sum(sorted(row.tolist(), reverse=True)[:k]) / k for row in logprobs]
    groups = [sum(tokens[max(0, t - window + 1): t + 1]) / min(t + 1, window) for t in range(num_tokens)]
    full = groups[window - 1:]
    lowest = min(full) if full else groups[-1]
    stop = None
    if threshold is not None:
        stop = next((t + 1 for t in range(window - 1, num_tokens) if groups[t] < threshold), None)
    return tokens, groups, lowest, stop


def close(a, b):
    return math.isclose(a, b, rel_tol=2e-5, abs_tol=2e-5)


def test_token_confidence_is_minus_the_mean_top_k_logprob():
    logits = torch.randn(5, 37) * 3
    top_k = torch.tensor([1, 3, 20, 37, 5])
    got = token_confidence(logits, top_k, 37)
    for row, k in enumerate(top_k.tolist()):
        lp = sorted(logits[row].double().log_softmax(0).tolist(), reverse=True)
        assert close(got[row].item(), -sum(lp[:k]) / k)
    flat = token_confidence(torch.zeros(1, 37), torch.tensor([37]), 37)
    assert close(flat.item(), math.log(37))  # a flat distribution: log V


@pytest.mark.parametrize("window,k,interval", [(1, 1, 1), (3, 5, 2), (7, 20, 8), (500, 20, 3), (16, 261, 1)])
def test_group_confidences_equal_the_hand_computation(window, k, interval):
    table = random_table(window * 31 + k)
    llm = make_llm(table)
    prompt = [5, 6, 7, 8, 9]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, confidence_window=window,
                            confidence_top_k=k, confidence_interval=interval, n=3)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    for c in out.outputs:
        conf = c.confidence
        assert conf is not None and conf.num_tokens == len(c.token_ids) == 40
        tokens, groups, lowest, _ = hand(table, len(prompt), 40, k, window)
        assert close(conf.mean, sum(tokens) / 40)
        assert close(conf.group, groups[-1])
        assert close(conf.lowest, lowest)
        assert conf.stop_index is None and c.finish_reason == "length"


def test_mixed_batch_of_requests_and_samples():
    """Requests with different windows, top-k and lengths, and one that tracks nothing, decode
    in one batch; prompts of different lengths see different rows of the table."""
    table = random_table(7)
    llm = make_llm(table, block_size=8)
    cases = [([3, 4, 5], dict(confidence_window=4, confidence_top_k=3, n=2), 30),
             ([9] * 11, dict(), 25),
             ([1, 2], dict(confidence_window=9, confidence_top_k=20, confidence_interval=5), 17),
             ([7] * 20, dict(confidence_window=2, confidence_top_k=1, n=3, confidence_interval=1), 33)]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, **kw) for _, kw, m in cases]
    outs = llm.generate([p for p, _, _ in cases], params, use_tqdm=False)
    for (prompt, kw, m), out in zip(cases, outs):
        for c in out.outputs:
            if "confidence_window" not in kw:
                assert c.confidence is None
                continue
            tokens, groups, lowest, _ = hand(table, len(prompt), m, kw["confidence_top_k"], kw["confidence_window"])
            assert c.confidence.num_tokens == m
            assert close(c.confidence.group, groups[-1]) and close(c.confidence.lowest, lowest)
            assert close(c.confidence.mean, sum(tokens) / m)


def peaked_then_flat(prompt_len, peaked, positions=128, vocab=261):
    """Very confident (one logit far above the rest) for `peaked` output tokens, then flat."""
    table = torch.randn(positions, vocab) * 0.01
    first = prompt_len - 1
    table[first: first + peaked, 50] = 30.0
    return table


@pytest.mark.parametrize("interval", [1, 4])
@pytest.mark.parametrize("window", [1, 5])
def test_low_confidence_path_stops_and_frees_its_blocks(window, interval):
    prompt = [10, 11, 12, 13, 14, 15]
    table = peaked_then_flat(len(prompt), peaked=23)
    llm = make_llm(table, num_kv_blocks=64, block_size=4)
    engine = llm.engine
    _, groups, _, _ = hand(table, len(prompt), 60, 20, window)
    threshold = (groups[window - 1] + math.log(261)) / 2  # between the peaked and the flat confidence
    _, _, _, stop = hand(table, len(prompt), 60, 20, window, threshold)
    assert stop is not None and stop > 23
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, confidence_window=window,
                            confidence_threshold=threshold, confidence_interval=interval, output_kind="final_only")
    engine.add_request("r", prompt, params)
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
        engine.check_invariants()
    c = final.outputs[0]
    assert c.finish_reason == "low_confidence" and c.stop_reason == stop == c.confidence.stop_index
    if interval == 1:
        assert len(c.token_ids) == stop  # at that very token
    else:
        assert stop <= len(c.token_ids) < stop + interval
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and not engine.runner.rows and not engine.runner.confidence.stash
    assert engine.stats().finished == {"low_confidence": 1}


def test_confident_path_runs_on_and_other_samples_stop():
    """Two requests in one batch: one stays above its threshold, the other stops."""
    prompt = [10, 11, 12]
    table = peaked_then_flat(len(prompt), peaked=30)
    llm = make_llm(table)
    high = SamplingParams(temperature=0, max_tokens=25, ignore_eos=True, confidence_window=4,
                          confidence_threshold=1.0, confidence_interval=1)
    low = dataclasses.replace(high, max_tokens=60, confidence_threshold=20.0)  # peaked ~28.5, flat log(261)
    stop = hand(table, len(prompt), 60, 20, 4, 20.0)[3]
    assert stop == 32  # the second flat token drags the 4-token group below 20
    a, b = llm.generate([prompt, prompt], [high, low], use_tqdm=False)
    assert a.outputs[0].finish_reason == "length" and a.outputs[0].confidence.stop_index is None
    assert b.outputs[0].finish_reason == "low_confidence" and b.outputs[0].stop_reason == stop
    assert len(b.outputs[0].token_ids) == stop
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks


def test_preempted_paths_keep_their_confidence():
    """A cache too small for every sample at once: samples are preempted and recomputed, and
    their confidences still equal the hand computation."""
    table = random_table(3, positions=60)
    llm = make_llm(table, num_kv_blocks=20, block_size=4)  # 12 blocks a sample: they take turns
    prompt = [4, 5, 6, 7, 8, 9, 10]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, confidence_window=6, n=4)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    assert llm.engine.stats().num_preemptions > 0
    _, groups, lowest, _ = hand(table, len(prompt), 40, 20, 6)
    for c in out.outputs:
        assert c.confidence.num_tokens == 40
        assert close(c.confidence.lowest, lowest) and close(c.confidence.group, groups[-1])


def test_bad_confidence_params():
    for kwargs, field in [(dict(confidence_window=0), "confidence_window"),
                          (dict(confidence_window=4, confidence_top_k=0), "confidence_top_k"),
                          (dict(confidence_window=4, confidence_interval=0), "confidence_interval"),
                          (dict(confidence_threshold=1.0), "confidence_threshold"),
                          (dict(confidence_window=4, confidence_threshold=float("nan")), "confidence_threshold"),
                          (dict(confidence_window=True), "confidence_window")]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kwargs)


def test_abort_and_failed_step_leave_no_state_behind():
    table = random_table(11)
    llm = make_llm(table)
    engine = llm.engine
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=50, ignore_eos=True, confidence_window=4, n=3)
    engine.add_request("a", [3, 4, 5], params)
    engine.add_request("b", [6, 7], dataclasses.replace(params, n=1))
    for _ in range(5):
        engine.step()
    [out] = engine.abort_request("a")
    assert {c.finish_reason for c in out.outputs} == {"abort"}
    assert all(c.confidence is not None and c.confidence.num_tokens == len(c.token_ids) for c in out.outputs)
    rows = engine.runner.confidence
    assert not rows.stash and all(s.seq_id not in rows.ok for s in engine.requests.get("a", ()) or ())
    step = engine.runner.step

    def failing(*args, **kwargs):
        raise RuntimeError("injected")

    engine.runner.step = failing
    with pytest.raises(RuntimeError, match="injected"):
        engine.step()
    engine.runner.step = step
    assert not rows.stash and not rows.ok and not engine.has_unfinished_requests()
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    # The engine still scores the next request exactly.
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, confidence_window=3)
    c = llm.generate([[3, 4, 5]], params, use_tqdm=False)[0].outputs[0]
    _, groups, lowest, _ = hand(table, 3, 20, 20, 3)
    assert close(c.confidence.lowest, lowest) and close(c.confidence.group, groups[-1])


@pytest.mark.parametrize("seed", range(int(os.environ.get("FASTCOT_CONFIDENCE_CASES", "5"))))
def test_random_requests_against_the_hand_computation(seed):
    """Random mixes of requests (windows, top-k, read intervals, thresholds, samples, prompt
    lengths, untracked rows) in a cache small enough to preempt some: every sample's
    confidence and low-confidence stop equal the hand computation."""
    rng = random.Random(seed)
    table = random_table(100 + seed, positions=96)
    llm = make_llm(table, num_kv_blocks=rng.choice([30, 60, 200]), block_size=rng.choice([4, 8]),
                   max_num_seqs=rng.choice([3, 8, 64]))
    prompts, params = [], []
    for _ in range(rng.randint(2, 6)):
        prompts.append([rng.randrange(3, 250) for _ in range(rng.randint(1, 20))])
        kw = dict(temperature=0, ignore_eos=True, max_tokens=rng.randint(1, 60), n=rng.choice([1, 1, 2, 3]))
        if rng.random() < 0.8:
            kw |= dict(confidence_window=rng.choice([1, 2, 5, 16, 100]), confidence_top_k=rng.choice([1, 4, 20, 261]),
                       confidence_interval=rng.choice([1, 1, 3, 8]))
            if rng.random() < 0.5:
                kw["confidence_threshold"] = rng.uniform(0.5, 6.0)
        params.append(SamplingParams(**kw))
    outs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, p, out in zip(prompts, params, outs):
        for c in out.outputs:
            if p.confidence_window is None:
                assert c.confidence is None and c.finish_reason == "length"
                continue
            _, _, _, stop = hand(table, len(prompt), p.max_tokens, p.confidence_top_k, p.confidence_window,
                                 p.confidence_threshold)
            n, conf = len(c.token_ids), c.confidence
            assert conf.num_tokens == n and conf.stop_index == stop
            if stop is None:
                assert c.finish_reason == "length" and n == p.max_tokens
            elif c.finish_reason == "low_confidence":  # at the first read from the crossing on
                assert c.stop_reason == stop and stop <= n < stop + p.confidence_interval
            else:  # the length limit came first
                assert c.finish_reason == "length" and n == p.max_tokens < stop + p.confidence_interval
            tokens, groups, lowest, _ = hand(table, len(prompt), n, p.confidence_top_k, p.confidence_window)
            assert close(conf.mean, sum(tokens) / n) and close(conf.group, groups[-1]) and close(conf.lowest, lowest)
    bm = llm.block_manager
    assert bm.num_free_blocks == bm.num_blocks and not llm.runner.confidence.stash
