"""N-gram speculative decoding: outputs equal plain decoding token for token (greedy and
seeded sampling, stub and real models, tight caches), drafts are accepted on repetitive text,
blocks taken for rejected drafts come back, and bad configurations fail clearly."""

import dataclasses

import pytest
import torch

import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.engine.speculative import NgramSpeculator, SpeculativeConfig

VOCAB = 300


class LoopyLogits(torch.nn.Module):
    """No attention: logits are a fixed function of the input token (so outputs cycle and
    n-gram drafts are often right) and, at some positions, of the position (so some drafts
    are wrong)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return torch.stack([input_ids, positions], dim=1).to(torch.float64)

    def compute_logits(self, hidden):
        token, pos = hidden[:, 0].long(), hidden[:, 1].long()
        logits = torch.zeros(hidden.shape[0], VOCAB)
        rows = torch.arange(hidden.shape[0])
        logits[rows, (token * 37 + 11) % VOCAB] = 12.0  # the likely successor
        logits[rows, (token * 53 + 7) % VOCAB] = 11.0  # a second choice for sampling
        kicked = pos % 23 == 0  # now and then a third, best of all
        logits[rows[kicked], (pos[kicked] * 17 + 3) % VOCAB] = 14.0
        return logits


def make_llm(speculative=None, num_kv_blocks=400, **kwargs):
    base = fastcot.models.load_config("tiny-random")
    config = dataclasses.replace(base, vocab_size=VOCAB, num_hidden_layers=1, max_position_embeddings=1024)
    return LLM.from_model(LoopyLogits(config), fastcot.models.load_tokenizer("tiny-random"), device="cpu",
                          num_kv_blocks=num_kv_blocks, block_size=4, max_model_len=min(1024, 4 * num_kv_blocks),
                          speculative_config=speculative, **kwargs)


def prompts(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 40, (count,), generator=gen)]


def ids(outs):
    return [c.token_ids for o in outs for c in o.outputs]


SPEC = {"num_speculative_tokens": 5, "max_batch_size": 8}


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("num_kv_blocks", [400, 60], ids=["roomy", "tight"])
def test_speculative_outputs_equal_plain_decoding(temperature, num_kv_blocks):
    ps = prompts(6)
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=30 + 9 * i, ignore_eos=True,
                             n=2 if i == 1 else 1) for i in range(6)]
    plain = make_llm(num_kv_blocks=num_kv_blocks)
    spec = make_llm(SPEC, num_kv_blocks=num_kv_blocks)
    schedule, bm = spec.scheduler.schedule, spec.block_manager

    def checked_schedule():  # a sequence never keeps the blocks of its rejected drafts
        for seq in spec.scheduler.running:
            assert len(seq.block_table) <= bm.num_blocks_needed(len(seq.token_ids))
        return schedule()

    spec.scheduler.schedule = checked_schedule
    assert ids(spec.generate(ps, params, use_tqdm=False)) == ids(plain.generate(ps, params, use_tqdm=False))
    s = spec.speculator
    assert s.num_steps > 0 and s.num_accepted > 0 and s.num_accepted < s.num_proposed  # some right, some wrong
    assert spec.block_manager.num_free_blocks == num_kv_blocks  # rejected drafts' blocks came back
    assert not spec.runner.rows and not s.indexes


def test_large_batches_do_not_speculate():
    llm = make_llm({"num_speculative_tokens": 3, "max_batch_size": 2})
    sizes = []
    verify = llm.runner.verify
    llm.runner.verify = lambda batch: sizes.append(len(batch.seqs)) or verify(batch)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (10, 15, 20, 60, 80)]
    llm.generate(prompts(5), params, use_tqdm=False)
    assert sizes and max(sizes) <= 2  # it speculates once only two sequences remain
    penalized = make_llm({"num_speculative_tokens": 3, "max_batch_size": 8})
    penalized.generate(prompts(2), SamplingParams(temperature=0, max_tokens=40, repetition_penalty=1.1),
                       use_tqdm=False)
    assert penalized.speculator.num_steps == 0  # their sampling depends on every accepted token


def test_stop_strings_and_length_limits_hold_inside_accepted_runs():
    ps = prompts(4, seed=1)
    params = SamplingParams(temperature=0, max_tokens=37, ignore_eos=True)
    plain = make_llm().generate(ps, params, use_tqdm=False)
    spec = make_llm(SPEC).generate(ps, params, use_tqdm=False)
    assert [len(t) for t in ids(spec)] == [37] * 4 and ids(spec) == ids(plain)
    assert [c.text for o in spec for c in o.outputs] == [c.text for o in plain for c in o.outputs]


def test_greedy_is_unchanged_on_a_real_model(real_checkpoint):
    path = real_checkpoint
    ps = prompts(5, seed=2)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    plain = LLM(str(path), device="cpu", num_kv_blocks=64)
    spec = LLM(str(path), device="cpu", num_kv_blocks=64, speculative_config=SPEC)
    assert ids(spec.generate(ps, params, use_tqdm=False)) == ids(plain.generate(ps, params, use_tqdm=False))
    assert spec.speculator.num_steps > 0


def test_accept_rule():
    s = NgramSpeculator(SpeculativeConfig())
    assert s.accept([1, 2, 3], [1, 2, 3, 4]) == [1, 2, 3, 4]  # all accepted, plus the bonus token
    assert s.accept([1, 2, 3], [1, 9, 3, 4]) == [1, 9]  # the first mismatch is kept
    assert s.accept([], [7]) == [7]
    assert (s.num_proposed, s.num_accepted) == (6, 4)


def test_bad_speculative_configs():
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        make_llm({"num_speculative_tokens": 0})
    with pytest.raises(ValueError, match="unknown keys"):
        make_llm({"num_speculative_token": 3})
    with pytest.raises(ValueError, match="method"):
        make_llm({"method": "eagle"})
    with pytest.raises(ValueError, match="prompt_lookup_max"):
        make_llm({"prompt_lookup_min": 3, "prompt_lookup_max": 2})
    with pytest.raises(TypeError, match="speculative_config"):
        make_llm(5)



def check_tables_at_every_forward(llm):
    """Wrap the model: at every forward, each live sequence's device row starts with its
    block table (what the attention kernels read)."""
    forward, runner = llm.runner.model.forward, llm.runner
    checks = []

    def checked(input_ids, positions, kv_caches, metadata):
        for seq in llm.scheduler.running:
            slot = runner.rows.get(seq.seq_id)
            if slot is not None:
                row = runner.tables[slot, : len(seq.block_table)].tolist()
                assert row == seq.block_table, f"sequence {seq.seq_id}: device row {row} != {seq.block_table}"
                checks.append(seq.seq_id)
        return forward(input_ids, positions, kv_caches, metadata)

    llm.runner.model.forward = checked
    return checks


@pytest.fixture(scope="module")
def real_checkpoint(llama_checkpoint):
    return llama_checkpoint[0]


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("prompt", [[159, 166, 236] * 3, [125, 116, 224, 136] * 4])
def test_rejected_drafts_leave_no_freed_block_in_the_device_table(real_checkpoint, block_size, prompt):
    # A rejected draft that crossed a block boundary frees its block; the device row kept the
    # freed id and the block later taken at that index was never written, so later steps
    # attended to a stale block (possibly another request's) and the output changed.
    path = real_checkpoint
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    plain = LLM(str(path), device="cpu", num_kv_blocks=64, block_size=block_size)
    spec = LLM(str(path), device="cpu", num_kv_blocks=64, block_size=block_size,
               speculative_config={"num_speculative_tokens": 2, "prompt_lookup_min": 1})
    checks = check_tables_at_every_forward(spec)
    expected = plain.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    assert spec.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids == expected
    assert spec.speculator.num_proposed > spec.speculator.num_accepted and checks  # drafts were rejected
