"""The model runner's decode inputs, kept on the device and advanced in place between steps,
equal inputs built from scratch from the sequences at every step: through new blocks,
copy-on-write after forks, preemption, finishing sequences and chunked prefills."""

import dataclasses

import pytest
import torch

import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.engine.model_runner import ModelRunner
from fastcot.engine.sampling import output_counts as count_outputs
from fastcot.engine.sampling import presence_mask

VOCAB = 300


class HashedLogits(torch.nn.Module):
    """A model with no attention: each row's logits are a fixed function of its input token and
    position, so sampled ids wander over the vocabulary and a row's logits do not depend on
    the batch it runs in."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return torch.stack([input_ids, positions], dim=1).to(torch.float64)

    def compute_logits(self, hidden):
        v = torch.arange(VOCAB, dtype=torch.float64)
        angle = v * (hidden[:, :1] * 0.6180339 + 0.1) + hidden[:, 1:] * 1.3
        return (3 * torch.sin(angle * 7.77)).to(torch.float32)


def expected_decode_inputs(seqs, bs):
    ids = [s.token_ids[-1] for s in seqs]
    positions = [len(s) - 1 for s in seqs]
    slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)]
    return ids, positions, slots, [len(s) for s in seqs]


class CheckingRunner:
    """Wraps a ModelRunner: every decode step's inputs are checked against the sequences."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.decode_steps = self.fast_steps = self.penalty_checks = self.count_checks = 0
        prepare, sampler = runner.prepare, runner.sampler
        self.batch = None

        def checked_prepare(batch):
            fast = not batch.is_prefill and runner._decode is not None and runner._decode.seqs == batch.seqs
            input_ids, positions, metadata = prepare(batch)
            self.batch = batch
            if batch.is_prefill:
                return input_ids, positions, metadata
            self.decode_steps += 1
            self.fast_steps += fast
            ids, pos, slots, lens = expected_decode_inputs(batch.seqs, runner.block_size)
            assert input_ids.tolist() == ids
            assert positions.tolist() == pos
            assert metadata.slot_mapping.tolist() == slots
            assert metadata.seq_lens.tolist() == lens
            tables = metadata.block_tables
            assert tables.shape[0] == len(batch.seqs)
            for row, seq in zip(tables.tolist(), batch.seqs):
                assert row[: len(seq.block_table)] == seq.block_table
            return input_ids, positions, metadata

        def checked_sampler(logits, tensors, presence=None, output_counts=None):
            if tensors.do_penalty and not self.batch.is_prefill:
                assert torch.equal(presence, presence_mask([s.token_ids for s in self.batch.seqs], VOCAB))
                self.penalty_checks += 1
            if tensors.do_output_penalty and not self.batch.is_prefill:
                expected = count_outputs([s.token_ids[s.prompt_len:] for s in self.batch.seqs], VOCAB)
                assert torch.equal(output_counts, expected)
                self.count_checks += 1
            assert tensors.steps.tolist()[: len(self.batch.seqs)] == [s.num_output for s in self.batch.seqs] \
                or self.batch.is_prefill
            return sampler(logits, tensors, presence, output_counts=output_counts)

        runner.prepare = checked_prepare
        runner.sampler = checked_sampler


def make_llm(num_kv_blocks, **kwargs):
    base = fastcot.models.load_config("tiny-random")
    config = dataclasses.replace(base, vocab_size=VOCAB, num_hidden_layers=1, max_position_embeddings=512)
    tokenizer = fastcot.models.load_tokenizer("tiny-random")
    llm = LLM.from_model(HashedLogits(config), tokenizer, device="cpu", num_kv_blocks=num_kv_blocks, block_size=4,
                         max_model_len=min(512, 4 * num_kv_blocks),
                         **kwargs)
    return llm, CheckingRunner(llm.runner)


def prompts(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 30, (count,), generator=gen)]


@pytest.mark.parametrize("num_kv_blocks", [400, 40], ids=["roomy", "preempting"])
def test_decode_inputs_equal_a_rebuild_at_every_step(num_kv_blocks):
    llm, check = make_llm(num_kv_blocks, max_num_batched_tokens=16)
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=10 + 7 * i, ignore_eos=True,
                             n=3 if i % 4 == 0 else 1, repetition_penalty=1.3 if i % 3 == 0 else 1.0,
                             min_tokens=5 if i % 5 == 0 else 0, presence_penalty=0.7 if i % 2 else 0.0,
                             frequency_penalty=0.4 if i % 4 == 1 else 0.0)
              for i in range(9)]
    outs = llm.generate(prompts(9), params, use_tqdm=False)
    assert [len(c.token_ids) for o, p in zip(outs, params) for c in o.outputs] == \
        [p.max_tokens for p in params for _ in range(p.n)]
    assert check.fast_steps > check.decode_steps // 2  # the in-place path is the common one
    assert check.penalty_checks > 0 and check.count_checks > 0
    if num_kv_blocks == 40:
        assert llm.scheduler.num_preemptions > 0
    assert llm.block_manager.num_free_blocks == num_kv_blocks  # everything released
    assert not llm.runner.rows


def test_seeded_samples_do_not_depend_on_the_batch():
    # The in-place sampling tensors keep each row's step counter: a seeded request samples
    # the same tokens alone and in a batch that changes around it.
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=40, ignore_eos=True, repetition_penalty=1.2)
    alone_llm, _ = make_llm(400)
    alone = alone_llm.generate([prompts(1)[0]], params, use_tqdm=False)[0].outputs[0].token_ids
    crowd_llm, _ = make_llm(400, max_num_batched_tokens=8)
    others = [SamplingParams(temperature=1.0, seed=i, max_tokens=3 + 5 * i, ignore_eos=True) for i in range(6)]
    outs = crowd_llm.generate(prompts(7)[1:] + [prompts(1)[0]], others + [params], use_tqdm=False)
    assert outs[-1].outputs[0].token_ids == alone


def test_logprobs_are_the_raw_distribution_of_each_output_token():
    llm, _ = make_llm(400, max_num_batched_tokens=8)
    model = llm.model
    ps = prompts(4, seed=5)
    params = [SamplingParams(temperature=0.8, seed=1, max_tokens=12, ignore_eos=True, logprobs=3),
              SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=7, ignore_eos=True, logprobs=0, n=2),
              SamplingParams(temperature=1.0, seed=2, max_tokens=5, ignore_eos=True, logprobs=1,
                             repetition_penalty=1.5)]
    outs = llm.generate(ps, params, use_tqdm=False)
    assert outs[1].outputs[0].logprobs is None
    for prompt, p, out in zip(ps, params, outs):
        for completion in out.outputs:
            if p.logprobs is None:
                continue
            ids = prompt + completion.token_ids
            assert len(completion.logprobs) == len(completion.token_ids)
            for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
                pos = len(prompt) - 1 + i
                hidden = torch.tensor([[ids[pos], pos]], dtype=torch.float64)
                expected = model.compute_logits(hidden).double().log_softmax(dim=1)[0]
                top = expected.topk(p.logprobs).indices.tolist()
                assert set(entry) == set(top) | {token}
                for t, lp in entry.items():
                    assert lp.logprob == pytest.approx(expected[t].item(), abs=1e-5)
                    assert lp.rank == 1 + int((expected > expected[t]).sum())
                    assert lp.decoded_token == llm.tokenizer.decode([t])
                assert list(entry)[0] == token  # the sampled token comes first
            assert completion.cumulative_logprob == pytest.approx(
                sum(entry[t].logprob for t, entry in zip(completion.token_ids, completion.logprobs)), abs=1e-4)
