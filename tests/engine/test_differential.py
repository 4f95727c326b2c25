"""Randomized differential test of the engine on a tiny random Llama checkpoint.

Each example draws an engine configuration (block size, a KV cache from the smallest allowed
(preemption) to roomy, prefill budgets down to one token (chunk ends at every boundary),
sequence limits, prefix caching, n-gram speculation) and a workload (prompts sharing
prefixes or repeating patterns, n > 1, greedy and seeded sampling, stop strings, EOS, every
output kind, requests arriving between steps, an abort now and then). The engine is driven
step by step with `LLMEngine.step()`, its accounting checked after every step (block
manager invariants, device block tables) and the tables each forward reads checked against
the sequences'. Then:

- every request equals the same request run alone in a plain engine (exact tokens, text and
  finish reason; greedy and seeded sampling are batch-invariant by construction);
- greedy requests equal a plain greedy loop over the transformers model (up to their stop);
- streamed deltas add up to the final output, and cumulative fields match the deltas.

A mismatch is accepted only at a numerical tie: where transformers' two best candidates (for
sampled rows, after the row's Gumbel noise) are within `TIE` of each other, since batch
shapes change float32 rounding; the comparison of that sample stops there.

`FASTCOT_DIFF_EXAMPLES=N` runs N examples (default 80, about 30 s of CPU), `FASTCOT_DIFF_SEED=S` shifts the seeds.
"""

import dataclasses
import os
import random

import pytest
import torch

from fastcot import LLMEngine, SamplingParams
from fastcot.engine.sampling import Sampler, gumbel_noise, request_key

EXAMPLES = int(os.environ.get("FASTCOT_DIFF_EXAMPLES", "80"))
SEED = int(os.environ.get("FASTCOT_DIFF_SEED", "0"))
MAX_MODEL_LEN = 96
TIE = 1e-3
EOS = 2


@pytest.fixture(scope="module")
def reference(llama_checkpoint):
    path, hf_model = llama_checkpoint
    return Reference(str(path), hf_model)


class Reference:
    """The transformers model (plain forward over the whole sequence at each step) and a plain
    engine (roomy cache, no chunking, no prefix cache, no speculation) for runs alone."""

    def __init__(self, path, hf_model):
        self.path, self.hf = path, hf_model
        self.alone = LLMEngine(path, device="cpu", num_kv_blocks=64, max_model_len=MAX_MODEL_LEN,
                               enable_prefix_caching=False)
        self._logits: dict[tuple, torch.Tensor] = {}

    def logits(self, ids) -> torch.Tensor:
        """transformers' next-token logits after `ids` (float64)."""
        key = tuple(ids)
        if key not in self._logits:
            with torch.inference_mode():
                self._logits[key] = self.hf(torch.tensor([list(ids)])).logits[0, -1].double()
        return self._logits[key]

    def greedy(self, prompt, steps) -> list[int]:
        out = []
        for _ in range(steps):
            out.append(int(self.logits(prompt + out).argmax()))
        return out

    def run_alone(self, prompt, params):
        """The request's final output, run alone."""
        self.alone.add_request("alone", prompt, dataclasses.replace(params, output_kind="final_only"))
        while self.alone.has_unfinished_requests():
            outputs = self.alone.step()
        return outputs[-1]

    def tie(self, params, index: int, ids, position: int, a: int, b: int) -> bool:
        """Whether tokens a and b are within TIE of each other as the next token after `ids`
        (greedy: logits; sampled: logits / temperature plus the sample's Gumbel noise)."""
        scores = self.logits(ids).clone()
        if not params.greedy:
            seed_key = request_key(params.seed, index)
            noise = gumbel_noise(torch.tensor([seed_key]), torch.tensor([position]),
                                 Sampler().vocab_hash(scores.shape[0], "cpu"))[0].double()
            scores = scores / params.temperature + noise
        return abs(float(scores[a] - scores[b])) < TIE


def draw_engine(rng: random.Random) -> dict:
    block_size = rng.choice([8, 16, 32])
    smallest = -(-MAX_MODEL_LEN // block_size)
    speculative = {"num_speculative_tokens": rng.randint(1, 4), "prompt_lookup_min": rng.choice([1, 1, 2])}
    return dict(block_size=block_size, num_kv_blocks=rng.choice([smallest, smallest, smallest + 1, 2 * smallest, 64]),
                max_num_batched_tokens=rng.choice([1, 2, 3, 5, 7, 16, 33, 8192]),
                max_num_seqs=rng.choice([1, 2, 3, 256]), enable_prefix_caching=rng.random() < 0.7,
                speculative_config=speculative if rng.random() < 0.5 else None)


def draw_requests(rng: random.Random) -> list[tuple]:
    base = [rng.randrange(3, 256) for _ in range(rng.randint(1, 40))]
    requests = []
    for i in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.4:  # shares a prefix with the base prompt (prefix cache, copy-on-write)
            prompt = base[: rng.randint(1, len(base))] + [rng.randrange(3, 256) for _ in range(rng.randint(0, 20))]
        elif kind < 0.7:  # a repeated pattern: n-gram drafts get proposed
            pattern = [rng.randrange(3, 256) for _ in range(rng.randint(1, 4))]
            prompt = pattern * rng.randint(2, 8)
        else:
            prompt = [rng.randrange(3, 256) for _ in range(rng.randint(1, 50))]
        greedy = rng.random() < 0.6
        params = SamplingParams(
            n=rng.choice([1, 1, 2, 3]), temperature=0.0 if greedy else rng.choice([0.7, 1.0, 1.5]),
            seed=None if greedy else rng.randrange(1000), max_tokens=rng.randint(1, 24),
            ignore_eos=rng.random() < 0.7, stop=["?"] if rng.random() < 0.4 else None,  # a placeholder (`with_stops`)
            output_kind=rng.choice(["cumulative", "delta", "final_only"]),
            logprobs=2 if rng.random() < 0.1 else None,
        )
        requests.append((f"req{i}", prompt[: MAX_MODEL_LEN - params.max_tokens], params, rng.randint(0, 12)))
    return requests


def with_stops(reference, requests, rng):
    """Replace each placeholder stop with 1-3 characters of the request's own text when run
    alone (possibly also a random character): stops that hit, mid-text, and whose first
    characters arrive a step before the last (the text a stream must hold back)."""
    out = []
    for rid, prompt, params, arrival in requests:
        if params.stop:
            text = reference.run_alone(prompt, dataclasses.replace(params, stop=None)).outputs[-1].text
            stops = [chr(rng.randrange(33, 127))]
            if text:
                start = rng.randrange(len(text))
                stops.insert(0, text[start: start + rng.randint(1, 3)])
            params = dataclasses.replace(params, stop=stops)
        out.append((rid, prompt, params, arrival))
    return out


def describe(params) -> str:
    """The fields the workload draws."""
    fields = ("n", "temperature", "seed", "max_tokens", "ignore_eos", "stop", "output_kind", "logprobs")
    return ", ".join(f"{f}={getattr(params, f)!r}" for f in fields)


def check_forward_tables(engine):
    """Wrap the runner: the block tables of every step must be the step's sequences' tables."""
    prepare = engine.runner.prepare

    def checked(batch):
        input_ids, positions, metadata = prepare(batch)
        rows = metadata.block_tables.tolist()
        for seq, row in zip(batch.seqs, rows):
            assert row[: len(seq.block_table)] == seq.block_table, f"sequence {seq.seq_id}: {row} != {seq.block_table}"
        return input_ids, positions, metadata

    engine.runner.prepare = checked
    return prepare


def drive(engine, requests, rng):
    """Add the requests at their arrival steps, step until done, check after every step, abort
    a request in some examples. Returns (outputs per request id, ids aborted or refused)."""
    outputs, aborted, step = {}, set(), 0
    abort_at = rng.randrange(40) if rng.random() < 0.2 else -1  # the step of one abort, in some examples
    pending = sorted(requests, key=lambda r: r[3])
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][3] <= step:
            rid, prompt, params, _ = pending.pop(0)
            bm = engine.block_manager
            if len(prompt) // bm.block_size + params.n > bm.num_blocks:
                with pytest.raises(ValueError, match=f"n={params.n} samples of a {len(prompt)}-token prompt need"):
                    engine.add_request(rid, prompt, params)
                aborted.add(rid)  # refused: the samples cannot hold their blocks together
                continue
            engine.add_request(rid, prompt, params)
        if step == abort_at and engine.requests:
            rid = rng.choice(sorted(engine.requests))
            engine.abort_request(rid)
            aborted.add(rid)
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        engine.check_invariants()
        step += 1
        assert step < 5000, "no progress"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    return outputs, aborted


def compare(reference, prompt, params, index, got_ids, want_ids, what):
    """Equal token ids, or equal up to a tie (then True: the rest is not compared)."""
    for j, (a, b) in enumerate(zip(got_ids, want_ids)):
        if a != b:
            assert reference.tie(params, index, prompt + want_ids[:j], j, a, b), \
                f"{what}: sample {index} differs at output token {j}: {a} != {b}"
            return True
    return False


@pytest.mark.parametrize("example", range(EXAMPLES))
def test_engine_equals_plain_references(reference, example):
    rng = random.Random(SEED * 1000003 + example)
    config, requests = draw_engine(rng), draw_requests(rng)
    requests = with_stops(reference, requests, rng)
    note = f"example {example}: {config}, requests {[(r[0], len(r[1]), describe(r[2]), r[3]) for r in requests]}"
    engine = LLMEngine(reference.path, device="cpu", max_model_len=MAX_MODEL_LEN, **config)
    check_forward_tables(engine)
    outputs, aborted = drive(engine, requests, rng)
    for rid, prompt, params, _ in requests:
        outs = outputs.get(rid, [])
        if rid in aborted:
            continue
        final = outs[-1]
        assert final.finished and sum(o.finished for o in outs) == 1, note
        alone = reference.run_alone(prompt, params)
        for got, want in zip(final.outputs, alone.outputs):
            i = got.index
            if params.output_kind == "delta":
                got_ids = sum((o.outputs[i].delta_token_ids for o in outs), [])
                got_text = "".join(o.outputs[i].delta_text for o in outs)
            else:
                got_ids, got_text = got.token_ids, got.text
            if params.output_kind != "final_only":  # streamed pieces add up to the final output
                assert sum((o.outputs[i].delta_token_ids for o in outs), []) == got_ids, note
                assert "".join(o.outputs[i].delta_text for o in outs) == got_text, note
            if params.output_kind == "cumulative":
                assert all(o.outputs[i].text == "".join(p.outputs[i].delta_text for p in outs[: k + 1])
                           for k, o in enumerate(outs)), note
            if compare(reference, prompt, params, i, got_ids, want.token_ids, f"alone, {note}"):
                continue
            assert (got_ids, got_text, got.finish_reason) == (want.token_ids, want.text, want.finish_reason), note
            if params.greedy:
                hf = reference.greedy(prompt, len(got_ids))
                compare(reference, prompt, params, i, got_ids, hf, f"transformers, {note}")
                if got.finish_reason == "length":
                    assert len(got_ids) == params.max_tokens, note
