"""Randomized differential test of suffix decoding on a tiny random Llama checkpoint.

Each example draws an engine (block size 8 or 16, a cache from the smallest allowed, where
sequences get preempted, to roomy; sequence limits; suffix decoding with draft lengths 1 to
12, the match factor, offset and probability floor, and the cache of finished outputs on or
off) and a workload (prompts with repeated patterns or sharing pieces, n > 1, greedy and
seeded sampling, repetition/presence/frequency penalties and logprobs now and then; requests
arriving between steps). Outputs repeat each other's text, so drafts come from the request
itself and from the cache. The engine is driven step by step, its accounting checked after
every step (block manager invariants: every block owned or free; device block tables equal
the block manager's) and the tables of every forward checked against the sequences'. Then
every sample equals the same request run alone by a plain engine (tokens, logprobs' ranks and
ids), up to a numerical tie (transformers' two best candidates within `TIE`, after the
sample's penalties and noise; batch shapes change float32 rounding), where the comparison of
that sample stops. Over the run, drafts must have crossed block boundaries both fully
accepted and rejected.

On a teacher-forced multi-turn trace whose outputs repeat earlier turns' outputs, suffix
decoding accepts far more drafts than n-gram lookup.

`FASTCOT_SUFFIX_EXAMPLES=N` runs N examples (default 8), `FASTCOT_DIFF_SEED=S` shifts the seeds.
"""

import dataclasses
import os
import random

import torch

from fastcot import LLMEngine, SamplingParams
from fastcot.engine.sampling import (
    Sampler,
    apply_output_penalties,
    apply_repetition_penalty,
    gumbel_noise,
    output_counts,
    presence_mask,
    request_key,
)

EXAMPLES = int(os.environ.get("FASTCOT_SUFFIX_EXAMPLES", "8"))
SEED = int(os.environ.get("FASTCOT_DIFF_SEED", "0"))
MAX_MODEL_LEN = 96
TIE = 1e-3


def draw_engine(rng: random.Random) -> dict:
    block_size = rng.choice([8, 16])
    smallest = -(-MAX_MODEL_LEN // block_size)
    spec = {"method": "suffix", "num_speculative_tokens": rng.randint(1, 12),
            "suffix_decoding_max_tree_depth": rng.choice([4, 24]),
            "suffix_decoding_max_spec_factor": rng.choice([1.0, 2.0]),
            "suffix_decoding_max_spec_offset": rng.choice([0.0, 2.0, 8.0]),
            "suffix_decoding_min_token_prob": rng.choice([0.0, 0.1, 0.3]),
            "suffix_decoding_max_cached_tokens": rng.choice([0, 64, 4096])}
    return {"block_size": block_size, "num_kv_blocks": rng.choice([smallest, smallest + 2, 2 * smallest, 64]),
            "max_num_seqs": rng.choice([1, 2, 4, 256]), "enable_prefix_caching": rng.random() < 0.5,
            "speculative_config": spec}


def draw_requests(rng: random.Random) -> list[tuple]:
    pieces = [[rng.randrange(3, 256) for _ in range(rng.randint(2, 6))] for _ in range(3)]
    requests = []
    for i in range(rng.randint(2, 6)):
        if rng.random() < 0.6:  # repeated patterns and shared pieces: drafts get proposed
            prompt = [t for piece in [rng.choice(pieces) for _ in range(rng.randint(1, 6))] for t in piece]
        else:
            prompt = [rng.randrange(3, 256) for _ in range(rng.randint(1, 30))]
        greedy = rng.random() < 0.6
        penalties = {}
        if rng.random() < 0.3:
            penalties = rng.choice([{"repetition_penalty": 1.05}, {"presence_penalty": 0.3},
                                    {"frequency_penalty": 0.2, "repetition_penalty": 0.95}])
        params = SamplingParams(n=rng.choice([1, 1, 2]), temperature=0.0 if greedy else rng.choice([0.7, 1.0]),
                                seed=None if greedy else rng.randrange(1000), max_tokens=rng.randint(8, 40),
                                ignore_eos=True, logprobs=rng.choice([None, None, 0, 2]), **penalties)
        requests.append((f"req{i}", prompt[: MAX_MODEL_LEN - params.max_tokens], params, rng.randint(0, 30)))
    return requests


class Tally:
    """Verified drafts that crossed a block boundary, fully accepted or not."""

    def __init__(self, engine):
        self.crossed_accepted = self.crossed_rejected = 0
        runner, spec, bs = engine.runner, engine.speculator, engine.block_manager.block_size
        verify, accept, flags = runner.verify, spec.accept, []

        def verify_(batch):
            flags[:] = [s.num_computed // bs != (end - 1) // bs for s, end in zip(batch.seqs, batch.chunk_ends)]
            return verify(batch)

        def accept_(drafts, sampled):
            tokens = accept(drafts, sampled)
            if flags.pop(0) and drafts:
                if len(tokens) == len(drafts) + 1:
                    self.crossed_accepted += 1
                else:
                    self.crossed_rejected += 1
            return tokens

        runner.verify, spec.accept = verify_, accept_


def check_forward_tables(engine):
    prepare = engine.runner._prepare_prefill

    def checked(batch):
        input_ids, positions, metadata = prepare(batch)
        for seq, row in zip(batch.seqs, metadata.block_tables.tolist()):
            assert row[: len(seq.block_table)] == seq.block_table, f"sequence {seq.seq_id}: {row}"
        return input_ids, positions, metadata

    engine.runner._prepare_prefill = checked


def drive(engine, requests) -> dict:
    outputs, step = {}, 0
    pending = sorted(requests, key=lambda r: r[3])
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][3] <= step:
            rid, prompt, params, _ = pending.pop(0)
            engine.add_request(rid, prompt, dataclasses.replace(params, output_kind="final_only"))
        for out in engine.step():
            outputs[out.request_id] = out
        engine.check_invariants()
        step += 1
        assert step < 5000, "no progress"
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and not engine.speculator.indexes
    return outputs


def is_tie(hf, prompt, params, index, want, j, a, b) -> bool:
    """Whether tokens a and b are within TIE as output token j (after the penalties and noise)."""
    ids = prompt + want[:j]
    with torch.inference_mode():
        scores = hf(torch.tensor([ids])).logits[0, -1:].double()
    vocab = scores.shape[1]
    if params.repetition_penalty != 1.0:
        scores = apply_repetition_penalty(scores, presence_mask([ids], vocab), torch.tensor([params.repetition_penalty]))
    if params.output_penalties:
        scores = apply_output_penalties(scores, output_counts([want[:j]], vocab), torch.tensor([params.presence_penalty]),
                                        torch.tensor([params.frequency_penalty]))
    scores = scores[0]
    if not params.greedy:
        noise = gumbel_noise(torch.tensor([request_key(params.seed, index)]), torch.tensor([j]),
                             Sampler().vocab_hash(vocab, "cpu"))[0].double()
        scores = scores / params.temperature + noise
    return abs(float(scores[a] - scores[b])) < TIE


def test_suffix_decoding_equals_plain_decoding(llama_checkpoint):
    path, hf = llama_checkpoint
    alone = LLMEngine(str(path), device="cpu", num_kv_blocks=64, max_model_len=MAX_MODEL_LEN,
                      enable_prefix_caching=False)
    crossed_accepted = crossed_rejected = accepted = 0
    for example in range(EXAMPLES):
        rng = random.Random(SEED * 1000003 + example)
        config, requests = draw_engine(rng), draw_requests(rng)
        note = f"example {example}: {config}"
        engine = LLMEngine(str(path), device="cpu", max_model_len=MAX_MODEL_LEN, **config)
        check_forward_tables(engine)
        tally = Tally(engine)
        outputs = drive(engine, requests)
        for rid, prompt, params, _ in requests:
            alone.add_request(rid, prompt, dataclasses.replace(params, output_kind="final_only"))
            finals = []
            while alone.has_unfinished_requests():
                finals += alone.step()
            for got, expected in zip(outputs[rid].outputs, finals[-1].outputs):
                g, w = got.token_ids, expected.token_ids
                j = next((j for j, (a, b) in enumerate(zip(g, w)) if a != b), None)
                if j is not None:
                    assert is_tie(hf, prompt, params, got.index, w, j, g[j], w[j]), \
                        f"{note}, {rid} sample {got.index} differs at output token {j}: {g[j]} != {w[j]}"
                    continue
                assert len(g) == len(w) == params.max_tokens, note
                if params.logprobs is not None:
                    for a, b in zip(got.logprobs, expected.logprobs):
                        assert [(t, lp.rank) for t, lp in a.items()] == [(t, lp.rank) for t, lp in b.items()], note
                        assert all(abs(a[t].logprob - b[t].logprob) < 1e-4 for t in a), note
        crossed_accepted += tally.crossed_accepted
        crossed_rejected += tally.crossed_rejected
        accepted += engine.speculator.num_accepted
    if EXAMPLES >= 4:  # the run covered what it is for
        assert accepted and crossed_accepted and crossed_rejected, (accepted, crossed_accepted, crossed_rejected)


class Forced(torch.nn.Module):
    """No attention: the next token is `ref[position + 1]` (a teacher-forced text)."""

    def __init__(self, config):
        super().__init__()
        self.config, self.lm_head_weight = config, torch.zeros(1)
        self.ref = torch.zeros(1, dtype=torch.int64)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return positions.to(torch.float64)[:, None]

    def compute_logits(self, hidden):
        target = self.ref[(hidden[:, 0].long() + 1).clamp(max=self.ref.shape[0] - 1)]
        return torch.nn.functional.one_hot(target, self.config.vocab_size).float() * 10.0


def test_suffix_accepts_more_than_ngram_on_a_repetitive_multi_turn_trace():
    # Each turn is its own request; its output strings together phrases that earlier turns'
    # outputs used (tool calls, quoted code), its prompt holds other text: only the cache of
    # finished outputs knows them, and n-gram lookup only sees the turn's own tokens.
    import fastcot.models
    from fastcot import LLM

    rng = random.Random(0)
    phrases = [[rng.randrange(3, 256) for _ in range(rng.randint(6, 16))] for _ in range(6)]
    turns = [([rng.randrange(3, 256) for _ in range(12)], [t for _ in range(6) for t in rng.choice(phrases)])
             for _ in range(10)]
    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), num_hidden_layers=1)
    rates = {}
    for method in ("ngram", "suffix"):
        model = Forced(config)
        llm = LLM.from_model(model, fastcot.models.load_tokenizer("tiny-random"), device="cpu", num_kv_blocks=128,
                             block_size=8, max_model_len=512, speculative_config={"method": method})
        generated = 0
        for prompt, output in turns:
            model.ref = torch.tensor(prompt + output + [0])
            params = SamplingParams(temperature=0, max_tokens=len(output), ignore_eos=True)
            got = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
            assert got == output
            generated += len(output)
        rates[method] = llm.speculator.num_accepted / generated  # tokens that cost no forward pass
        assert not llm.speculator.indexes
    assert rates["suffix"] > 1.5 * rates["ngram"], rates
    cache = llm.speculator.cache
    assert 0 < cache.num_live_tokens <= sum(len(o) for _, o in turns)
