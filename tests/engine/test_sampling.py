"""Sampling: parameters, truncation and penalties against Hugging Face's logits processors,
distribution checks, seeded reproducibility independent of the batch, no host reads."""

from __future__ import annotations

import pytest
import torch

from fastcot.engine.sampling import (
    Sampler,
    SamplingParams,
    SamplingTensors,
    apply_repetition_penalty,
    compute_logprobs,
    count_tokens_,
    output_counts,
    presence_mask,
    record_tokens_,
    request_key,
    truncate,
)

logits_process = pytest.importorskip("transformers.generation.logits_process")

# 99.99% quantiles of chi-square, by degrees of freedom (scipy.stats.chi2.ppf(1 - 1e-4, df)).
CHI2_9999 = {3: 21.11, 5: 25.74, 7: 29.88, 9: 33.72}


def pack(params, output_lens=None, sample_indices=None, **kw) -> SamplingTensors:
    """Rows keyed as the engine keys them; an unseeded row's seed is its row index."""
    sample_indices = sample_indices or [0] * len(params)
    if "keys" not in kw:
        seeds = [row if p.seed is None else p.seed for row, p in enumerate(params)]
        kw["keys"] = [request_key(seed, i) for seed, i in zip(seeds, sample_indices)]
    return SamplingTensors.from_params(params, output_lens=output_lens or [0] * len(params), **kw)


def hf_truncate(scaled_row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """One row through HF's warpers, in generate's order (temperature already applied)."""
    x = scaled_row.unsqueeze(0)
    if p.top_k:
        x = logits_process.TopKLogitsWarper(p.top_k)(None, x)
    if p.top_p < 1:
        x = logits_process.TopPLogitsWarper(p.top_p)(None, x)
    if p.min_p > 0:
        x = logits_process.MinPLogitsWarper(p.min_p)(None, x)
    return x.squeeze(0)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    return float(((counts.double() - expected) ** 2 / expected).sum())


# ---- SamplingParams -------------------------------------------------------------------------


def test_defaults_match_design():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (1, 1.0, 1.0, 0, 0.0, 1.0)
    assert (p.max_tokens, p.min_tokens, p.stop, p.stop_token_ids) == (16, 0, None, None)
    assert (p.ignore_eos, p.seed, p.logprobs) == (False, None, None)
    assert SamplingParams(temperature=0).greedy and not p.greedy
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("n", 0), ("n", 1.5), ("temperature", -0.1), ("temperature", float("nan")), ("temperature", "hot"),
        ("top_p", 0.0), ("top_p", 1.01), ("top_k", -2), ("top_k", 2.0), ("min_p", -0.1), ("min_p", 1.5),
        ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("max_tokens", 0), ("min_tokens", -1),
        ("stop", 3), ("stop", [""]), ("stop", ["a", None]), ("stop_token_ids", [-1]), ("stop_token_ids", 5),
        ("ignore_eos", 1), ("seed", 1.5), ("logprobs", -1),
    ],
)
def test_bad_params_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field} "):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_raises():
    with pytest.raises(ValueError, match=r"min_tokens must be <= max_tokens \(4\), got 5"):
        SamplingParams(max_tokens=4, min_tokens=5)


# ---- truncation and penalties versus HF -----------------------------------------------------

MIXED = [
    SamplingParams(top_k=1), SamplingParams(top_k=7), SamplingParams(top_k=50, top_p=0.8),
    SamplingParams(top_p=0.5), SamplingParams(top_p=0.95, min_p=0.05), SamplingParams(min_p=0.2),
    SamplingParams(top_k=20, top_p=0.9, min_p=0.1), SamplingParams(),
]


@pytest.mark.parametrize(
    "params",
    [
        MIXED,
        [SamplingParams(top_k=k) for k in (1, 3, 10, 0)],  # top-k only: the torch.topk path
        [SamplingParams(top_p=p, temperature=t) for p, t in ((0.1, 0.5), (0.6, 1.0), (0.99, 2.0))],
        [SamplingParams(min_p=m) for m in (0.0, 0.01, 0.5, 1.0)],
    ],
    ids=["mixed", "top_k", "top_p", "min_p"],
)
@pytest.mark.parametrize("vocab_size", [50, 1000])
def test_truncation_matches_hf_warpers(params, vocab_size):
    logits = torch.randn(len(params), vocab_size) * 3
    t = pack(params)
    temperature = t.temperature.unsqueeze(1)
    got = truncate(logits / temperature, t)
    for row, p in enumerate(params):
        expected = hf_truncate(logits[row] / p.temperature, p)
        assert torch.equal(torch.isinf(got[row]), torch.isinf(expected)), f"row {row} {p}: kept sets differ"
        kept = ~torch.isinf(expected)
        assert torch.equal(got[row][kept], expected[kept])


@pytest.mark.parametrize("vocab_size", [64, 5000])
def test_sampled_tokens_lie_in_the_kept_set(vocab_size):
    params = MIXED * 64
    logits = torch.randn(len(params), vocab_size) * 2
    t = pack(params)
    ids = Sampler()(logits, t)
    kept = ~torch.isinf(truncate(logits, t))
    assert kept.gather(1, ids.unsqueeze(1)).all()


def test_repetition_penalty_matches_hf():
    vocab_size = 300
    logits = torch.randn(4, vocab_size) * 4  # both signs
    token_ids = [[1, 5, 5, 299], [], [0, 2, 4, 6, 8] * 10, list(range(0, 300, 3))]
    penalties = [1.3, 2.0, 0.7, 1.0]
    got = apply_repetition_penalty(logits, presence_mask(token_ids, vocab_size), torch.tensor(penalties))
    for row, (ids, penalty) in enumerate(zip(token_ids, penalties)):
        input_ids = torch.tensor([ids], dtype=torch.int64).reshape(1, -1)
        expected = logits_process.RepetitionPenaltyLogitsProcessor(penalty)(input_ids, logits[row : row + 1].clone())
        assert torch.equal(got[row], expected[0]), f"row {row}"


def test_greedy_with_penalty_picks_hf_argmax():
    vocab_size = 100
    logits = torch.randn(2, vocab_size)
    logits[:, 10] = 5.0
    logits[:, 11] = 4.0
    history = [[10], [11]]
    params = [SamplingParams(temperature=0, repetition_penalty=2.0)] * 2
    ids = Sampler()(logits, pack(params), presence=presence_mask(history, vocab_size))
    assert ids.tolist() == [11, 10]


def test_presence_mask_and_record_tokens():
    mask = presence_mask([[3, 3, 1], []], 6)
    assert mask.tolist() == [[False, True, False, True, False, False], [False] * 6]
    record_tokens_(mask, torch.tensor([5, 0]))
    assert mask.nonzero().tolist() == [[0, 1], [0, 3], [0, 5], [1, 0]]


# ---- greedy, min_tokens ---------------------------------------------------------------------


def test_greedy_equals_argmax_in_mixed_and_all_greedy_batches():
    logits = torch.randn(16, 3000)
    expected = logits.argmax(dim=1)
    all_greedy = pack([SamplingParams(temperature=0)] * 16)
    assert all_greedy.all_greedy
    assert torch.equal(Sampler()(logits, all_greedy), expected)
    params = [SamplingParams(temperature=(0, 1e-7)[i % 4 // 2] if i % 2 else 1.0, top_k=5, seed=i) for i in range(16)]
    ids = Sampler()(logits, pack(params))
    assert torch.equal(ids[1::2], expected[1::2])


EOS, STOP = 2, 9


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_tokens_blocks_eos_and_stop_ids(temperature):
    logits = torch.zeros(4, 20)
    logits[:, EOS] = 50.0
    logits[:, STOP] = 40.0
    p = SamplingParams(temperature=temperature, min_tokens=3, stop_token_ids=[STOP], seed=0)
    sampler = Sampler()
    ids = sampler(logits, pack([p] * 4, output_lens=[0, 1, 2, 3], eos_token_ids=[EOS]))
    assert EOS not in ids[:3].tolist() and STOP not in ids[:3].tolist()
    assert ids[3].item() == EOS  # min_tokens reached: EOS allowed again
    ignoring = SamplingParams(temperature=temperature, min_tokens=3, ignore_eos=True, seed=0)
    assert sampler(logits[:1], pack([ignoring], eos_token_ids=[EOS])).item() == EOS  # EOS does not stop it anyway
    extra = sampler(logits[:1], pack([SamplingParams(temperature=temperature)], extra_suppress_ids=[[EOS, STOP]]))
    assert extra.item() not in (EOS, STOP)


# ---- distributions and seeds ----------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_distribution(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows = 20000
    params = [SamplingParams(temperature=temperature, seed=i) for i in range(rows)]
    ids = Sampler()(logits.expand(rows, -1).contiguous(), pack(params))
    counts = torch.bincount(ids, minlength=6)
    assert chi_square(counts, (logits / temperature).softmax(0)) < CHI2_9999[5]


def test_one_seed_over_many_steps_follows_the_truncated_distribution():
    logits = torch.randn(1, 40) * 2
    p = SamplingParams(temperature=0.8, top_k=10, top_p=0.9, seed=1234)
    steps = 20000
    t = pack([p] * steps, output_lens=list(range(steps)))
    scaled = truncate(logits / 0.8, pack([p]))[0]
    kept = ~torch.isinf(scaled)
    ids = Sampler()(logits.expand(steps, -1).contiguous(), t)
    counts = torch.bincount(ids, minlength=40)
    assert counts[~kept].sum() == 0
    df = int(kept.sum()) - 1
    assert df in CHI2_9999, df  # the fixed seed decides the kept-set size
    assert chi_square(counts[kept], scaled[kept].softmax(0)) < CHI2_9999[df]


def test_seeded_row_is_independent_of_batch_composition_and_position():
    torch.manual_seed(1)
    vocab_size = 500
    row = torch.randn(vocab_size)
    target = SamplingParams(temperature=0.9, top_p=0.95, seed=42)
    others = [SamplingParams(temperature=0), SamplingParams(top_k=3, seed=7), SamplingParams(min_p=0.3),
              SamplingParams(repetition_penalty=1.5), SamplingParams(top_p=0.2, temperature=1.7)]
    sampler = Sampler()
    results = set()
    for position, neighbours in [(0, []), (0, others), (3, others), (5, others[::-1]), (2, others[:2])]:
        params = list(neighbours)
        params.insert(position, target)
        logits = torch.randn(len(params), vocab_size)
        logits[position] = row
        history = [[1, 2, 3]] * len(params)
        history[position] = []
        t = pack(params, output_lens=[17] * len(params))
        ids = sampler(logits, t, presence=presence_mask(history, vocab_size))
        results.add(ids[position].item())
    assert len(results) == 1


def test_steps_samples_and_seeds_give_different_draws():
    vocab_size = 1000
    logits = torch.zeros(64, vocab_size)  # uniform: draws are distinct unless the noise repeats
    sampler = Sampler()
    p = SamplingParams(seed=5)
    by_step = sampler(logits, pack([p] * 64, output_lens=list(range(64))))
    by_sample = sampler(logits, pack([p] * 64, sample_indices=list(range(64))))
    by_seed = sampler(logits, pack([SamplingParams(seed=s) for s in range(64)]))
    for ids in (by_step, by_sample, by_seed):
        assert len(set(ids.tolist())) > 55  # ~62 expected for 64 uniform draws out of 1000


def test_keys_decide_the_draws():
    logits = torch.zeros(64, 1000)
    params = [SamplingParams()] * 64
    sampler = Sampler()
    keys = [request_key(1234, i) for i in range(64)]
    a = sampler(logits, SamplingTensors.from_params(params, output_lens=[0] * 64, keys=keys))
    b = sampler(logits, SamplingTensors.from_params(params, output_lens=[0] * 64, keys=keys))
    assert torch.equal(a, b)
    fresh = sampler(logits, SamplingTensors.from_params(params, output_lens=[0] * 64))  # random keys
    assert not torch.equal(a, fresh)


def test_advance_moves_to_the_next_step():
    logits = torch.zeros(32, 1000)
    params = [SamplingParams(seed=s) for s in range(32)]
    sampler = Sampler()
    advanced = pack(params, output_lens=[4] * 32).advance_()
    assert torch.equal(sampler(logits, advanced), sampler(logits, pack(params, output_lens=[5] * 32)))


# ---- no host synchronization ----------------------------------------------------------------


def test_sampler_runs_on_meta_tensors():
    """A meta tensor has no data: any `.item()`, data-dependent shape or host read would fail."""
    params = MIXED + [SamplingParams(temperature=0, repetition_penalty=1.2, min_tokens=2, stop_token_ids=[3]),
                      SamplingParams(presence_penalty=0.5, frequency_penalty=-0.3)]
    t = pack(params, eos_token_ids=[2], device="meta")
    logits = torch.empty(len(params), 128, device="meta")
    presence = torch.empty(len(params), 128, dtype=torch.bool, device="meta")
    counts = torch.empty(len(params), 128, dtype=torch.int32, device="meta")
    ids = Sampler()(logits, t, presence=presence, output_counts=counts)
    assert ids.shape == (len(params),) and ids.dtype == torch.int64
    record_tokens_(presence, ids)
    count_tokens_(counts, ids)


def test_penalty_without_presence_is_a_clear_error():
    with pytest.raises(ValueError, match="presence"):
        Sampler()(torch.randn(1, 10), pack([SamplingParams(repetition_penalty=1.1)]))


def test_compute_logprobs():
    logits = torch.randn(3, 50)
    ids = torch.tensor([0, 7, 49])
    token_lp, top_ids, top_lp = compute_logprobs(logits, ids, num_top=2)
    expected = logits.log_softmax(1)
    assert torch.allclose(token_lp, expected[torch.arange(3), ids])
    assert torch.equal(top_ids, expected.topk(2, dim=1).indices)
    assert torch.allclose(top_lp, expected.topk(2, dim=1).values)


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager():
    device = torch.device("cuda")
    params = MIXED * 4
    t = pack(params, output_lens=list(range(len(params))), device=device)
    sampler = Sampler()
    static_logits = torch.randn(len(params), 32000, device=device)
    sampler(static_logits, t)  # warm-up: caches the vocabulary hash outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_ids = sampler(static_logits, t)
    for _ in range(3):
        static_logits.copy_(torch.randn_like(static_logits))
        t.steps.add_(1)
        graph.replay()
        assert torch.equal(static_ids, sampler(static_logits, t))


@pytest.mark.gpu
def test_cuda_graph_replay_with_penalties_equals_eager():
    # The penalty state lives on the device and is updated inside the graph, as decode steps do.
    device = torch.device("cuda")
    params = [SamplingParams(temperature=0, presence_penalty=0.8, frequency_penalty=0.3, repetition_penalty=1.2),
              SamplingParams(seed=1, presence_penalty=-0.5), SamplingParams(seed=2, frequency_penalty=1.5)] * 2
    t = pack(params, output_lens=[3] * len(params), device=device)
    history = [[1, 1, 5], [7, 8, 9], [2, 2, 2]] * 2
    presence = presence_mask(history, 1000, device)
    counts = output_counts(history, 1000, device)
    logits = torch.randn(len(params), 1000, device=device)
    sampler = Sampler()
    sampler(logits, t, presence, output_counts=counts)  # warm-up outside the capture
    eager_presence, eager_counts = presence.clone(), counts.clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ids = sampler(logits, t, presence, output_counts=counts)
        record_tokens_(presence, ids)
        count_tokens_(counts, ids)
    presence.copy_(eager_presence)
    counts.copy_(eager_counts)
    for _ in range(4):
        logits.copy_(torch.randn_like(logits))
        expected = sampler(logits, t, eager_presence, output_counts=eager_counts)
        record_tokens_(eager_presence, expected)
        count_tokens_(eager_counts, expected)
        graph.replay()
        assert torch.equal(ids, expected)
        assert torch.equal(presence, eager_presence) and torch.equal(counts, eager_counts)
        t.steps.add_(1)
