"""Speculative decoding (n-gram and suffix drafts): outputs equal plain decoding token for token
(greedy and seeded sampling, stub and real models, tight caches, repetition, presence and
frequency penalties, logprobs), drafts are accepted on repetitive text, blocks taken for
rejected drafts come back, and bad configurations fail clearly."""

import dataclasses

import pytest
import torch

import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.engine.speculative import NgramSpeculator, SpeculativeConfig, cli_config

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
SUFFIX = {"method": "suffix", "num_speculative_tokens": 5, "max_batch_size": 8}
METHODS = {"ngram": SPEC, "suffix": SUFFIX}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("num_kv_blocks", [400, 60], ids=["roomy", "tight"])
def test_speculative_outputs_equal_plain_decoding(temperature, num_kv_blocks, method):
    ps = prompts(6)
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=30 + 9 * i, ignore_eos=True,
                             n=2 if i == 1 else 1) for i in range(6)]
    plain = make_llm(num_kv_blocks=num_kv_blocks)
    spec = make_llm(METHODS[method], num_kv_blocks=num_kv_blocks)
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


def logprob_lists(outs):
    return [None if c.logprobs is None else [{t: (lp.logprob, lp.rank) for t, lp in entry.items()} for entry in c.logprobs]
            for o in outs for c in o.outputs]


PENALTIES = {"repetition": {"repetition_penalty": 1.05}, "presence": {"presence_penalty": 0.6},
             "frequency": {"frequency_penalty": 0.2},
             "all": {"repetition_penalty": 0.8, "presence_penalty": -0.5, "frequency_penalty": 0.3}}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_penalties_and_logprobs_speculate_and_equal_plain_decoding(method, penalty):
    # Each verified position is penalized over the tokens before it, the drafts before it
    # included, and scored under the raw distribution, as plain decoding does token by token.
    ps = prompts(5, seed=3)
    params = [SamplingParams(temperature=0.0 if i % 2 else 0.9, seed=i, max_tokens=25 + 7 * i, ignore_eos=True,
                             logprobs=None if i == 2 else i % 3, **PENALTIES[penalty]) for i in range(5)]
    plain = make_llm().generate(ps, params, use_tqdm=False)
    llm = make_llm(METHODS[method])
    spec = llm.generate(ps, params, use_tqdm=False)
    assert ids(spec) == ids(plain)
    assert logprob_lists(spec) == logprob_lists(plain)
    assert [c.cumulative_logprob for o in spec for c in o.outputs] == \
        [c.cumulative_logprob for o in plain for c in o.outputs]
    s = llm.speculator
    assert s.num_steps > 0 and 0 < s.num_accepted < s.num_proposed


def test_stop_strings_and_length_limits_hold_inside_accepted_runs():
    ps = prompts(4, seed=1)
    params = SamplingParams(temperature=0, max_tokens=37, ignore_eos=True)
    plain = make_llm().generate(ps, params, use_tqdm=False)
    spec = make_llm(SPEC).generate(ps, params, use_tqdm=False)
    assert [len(t) for t in ids(spec)] == [37] * 4 and ids(spec) == ids(plain)
    assert [c.text for o in spec for c in o.outputs] == [c.text for o in plain for c in o.outputs]


@pytest.mark.parametrize("method", METHODS)
def test_greedy_is_unchanged_on_a_real_model(real_checkpoint, method):
    path = real_checkpoint
    ps = prompts(5, seed=2)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    plain = LLM(str(path), device="cpu", num_kv_blocks=64)
    spec = LLM(str(path), device="cpu", num_kv_blocks=64, speculative_config=METHODS[method])
    assert ids(spec.generate(ps, params, use_tqdm=False)) == ids(plain.generate(ps, params, use_tqdm=False))
    assert spec.speculator.num_steps > 0


def test_penalties_and_logprobs_on_a_real_model(real_checkpoint):
    # The verification pass (prefill attention) and plain decode steps round differently:
    # equal tokens and ranks, log-probabilities to float32 accuracy.
    path = real_checkpoint
    ps = [[159, 166, 236] * 3, [125, 116, 224, 136] * 4, *prompts(2, seed=5)]
    params = [SamplingParams(temperature=0.8 if i % 2 else 0, seed=i, max_tokens=30, ignore_eos=True, logprobs=2,
                             repetition_penalty=1.02, frequency_penalty=0.02) for i in range(4)]
    plain = LLM(str(path), device="cpu", num_kv_blocks=64).generate(ps, params, use_tqdm=False)
    llm = LLM(str(path), device="cpu", num_kv_blocks=64, speculative_config=SUFFIX)
    spec = llm.generate(ps, params, use_tqdm=False)
    assert ids(spec) == ids(plain) and llm.speculator.num_accepted > 0
    for got, want in zip(logprob_lists(spec), logprob_lists(plain)):
        for a, b in zip(got, want):
            assert a.keys() == b.keys() and [r for _, r in a.values()] == [r for _, r in b.values()]
            assert all(abs(a[t][0] - b[t][0]) < 1e-4 for t in a)


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
    with pytest.raises(ValueError, match="do not apply to method 'suffix'"):
        make_llm({"method": "suffix", "prompt_lookup_max": 3})
    with pytest.raises(ValueError, match="do not apply to method 'ngram'"):
        make_llm({"suffix_decoding_max_tree_depth": 8})
    for key, bad in (("suffix_decoding_max_tree_depth", 0), ("suffix_decoding_max_spec_factor", 0.0),
                     ("suffix_decoding_min_token_prob", 1.5), ("suffix_decoding_max_cached_tokens", -1),
                     ("suffix_decoding_max_spec_offset", float("nan"))):
        with pytest.raises(ValueError, match=key):
            make_llm({"method": "suffix", key: bad})
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


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("prompt", [[159, 166, 236] * 3, [125, 116, 224, 136] * 4])
def test_rejected_drafts_leave_no_freed_block_in_the_device_table(real_checkpoint, block_size, prompt, method):
    # A rejected draft that crossed a block boundary frees its block; the device row kept the
    # freed id and the block later taken at that index was never written, so later steps
    # attended to a stale block (possibly another request's) and the output changed.
    path = real_checkpoint
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    plain = LLM(str(path), device="cpu", num_kv_blocks=64, block_size=block_size)
    spec = LLM(str(path), device="cpu", num_kv_blocks=64, block_size=block_size,
               speculative_config={"num_speculative_tokens": 2, "prompt_lookup_min": 1} if method == "ngram"
               else {"method": "suffix", "num_speculative_tokens": 2, "suffix_decoding_max_spec_offset": 2.0})
    checks = check_tables_at_every_forward(spec)
    expected = plain.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    assert spec.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids == expected
    assert spec.speculator.num_proposed > spec.speculator.num_accepted and checks  # drafts were rejected


class CycleLogits(LoopyLogits):
    """Tokens 5 -> 10 lead into the cycle 20 -> 21 -> 22 -> 20 (logit 12); every token's second
    choice is itself + 100 (logit 11). A penalty of the successor flips the choice, so a
    penalty that misses the drafts before a position picks the wrong token there."""

    def compute_logits(self, hidden):
        token = hidden[:, 0].long()
        successor = torch.where((token >= 20) & (token <= 22), 20 + (token - 19) % 3, (token * 37 + 11) % 100)
        successor = torch.where(token == 5, 10, torch.where(token == 10, 20, successor))
        logits = torch.zeros(hidden.shape[0], VOCAB)
        rows = torch.arange(hidden.shape[0])
        logits[rows, successor] = 12.0
        logits[rows, (token + 100) % VOCAB] = 11.0
        return logits


def make_cycle_llm(speculative=None):
    llm = make_llm(speculative)
    llm.engine.model.__class__ = CycleLogits
    return llm


@pytest.mark.parametrize("penalty", ["repetition", "presence"])
def test_penalties_see_the_drafts_before_each_position(penalty):
    # The first output is 10, then the drafts 20 21 22 20 ...: at the position after 22 the
    # successor 20 is penalized only because the first draft put it there (it is in neither
    # the prompt nor the earlier output), so plain decoding leaves the cycle there.
    spec = {"method": "suffix", "num_speculative_tokens": 5, "suffix_decoding_max_spec_offset": 5.0}
    teacher = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    if penalty == "repetition":  # drafts from the cache: the other request's output
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, repetition_penalty=1.2)
        first, prompt = [[5]], [3, 5]
    else:  # drafts from the prompt, whose tokens the presence penalty ignores
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, presence_penalty=1.5)
        first, prompt = [], [10, 20, 21, 22, 20, 21, 22, 7, 5]
    plain, llm = make_cycle_llm(), make_cycle_llm(spec)
    for engine in (plain, llm):
        engine.generate(first, teacher, use_tqdm=False)
    want = plain.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    got = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    assert got == want and want[:5] == [10, 20, 21, 22, 122]
    assert llm.speculator.num_accepted >= 3


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_padded_verification_layout_equals_plain_decoding(real_checkpoint, max_batch):
    # The inputs CUDA graphs of verification steps replay (each step's sequences, then one
    # dummy sequence filling the bucket, then empty ones), run eagerly: the same tokens.
    from fastcot.engine.cuda_graphs import VerifyGraphs

    path = real_checkpoint
    ps = [[159, 166, 236] * 3, [125, 116, 224, 136] * 4, *prompts(3, seed=7)]
    params = [SamplingParams(temperature=0.9 if i % 2 else 0, seed=i, max_tokens=16 + 10 * i, ignore_eos=True,
                             logprobs=1, repetition_penalty=1.02 if i == 2 else 1.0) for i in range(5)]
    plain = LLM(str(path), device="cpu", num_kv_blocks=64, block_size=8)
    llm = LLM(str(path), device="cpu", num_kv_blocks=64, block_size=8, max_num_seqs=max(max_batch, 2),
              speculative_config=SUFFIX | {"max_batch_size": max_batch, "suffix_decoding_max_spec_offset": 4.0})
    runner = llm.runner
    graphs = VerifyGraphs(runner.model, runner.kv_caches, max_batch=max_batch, tokens_per_seq=6,
                          max_blocks_per_seq=runner.max_blocks_per_seq, device=torch.device("cpu"), capture=False)
    runs, run = [], graphs.run
    graphs.run = lambda *a: runs.append(a[0].shape[0]) or run(*a)
    runner.verify_graphs = graphs
    got, want = llm.generate(ps, params, use_tqdm=False), plain.generate(ps, params, use_tqdm=False)
    s = llm.speculator
    assert ids(got) == ids(want) and runs and max(runs) > 2 * min(max_batch, 2) and s.num_proposed > s.num_accepted
    assert s.num_accepted > 0 or max_batch == 1
    assert [[list(e) for e in c.logprobs] for o in got for c in o.outputs] == \
        [[list(e) for e in c.logprobs] for o in want for c in o.outputs]


@pytest.mark.gpu
def test_cuda_graph_verification_equals_eager():
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    prompts_ = ["1 2 3 1 2 3 1 2 3", "abcabcabcabc", "Once upon a time"]
    outs = []
    for eager in (True, False):
        llm = LLM("tiny-random", device="cuda", num_kv_blocks=256, max_num_seqs=8, enforce_eager=eager,
                  speculative_config=SUFFIX)
        outs.append([o.outputs[0].token_ids for o in llm.generate(prompts_, params, use_tqdm=False)])
        if not eager:
            assert llm.runner.verify_graphs is not None and llm.runner.verify_graphs.graphs
            assert llm.speculator.num_steps > 0
    assert outs[0] == outs[1]


def test_command_line_flags_give_the_config():
    assert cli_config(0, None) is None
    assert cli_config(3, None) == {"method": "ngram", "num_speculative_tokens": 3}
    assert cli_config(0, "suffix") == {"method": "suffix"}
    assert SpeculativeConfig.from_user(cli_config(0, "suffix")).num_speculative_tokens == 16
    assert cli_config(8, "suffix") == {"method": "suffix", "num_speculative_tokens": 8}
    with pytest.raises(ValueError, match="--speculative-tokens"):
        cli_config(-1, None)
    with pytest.raises(ValueError, match="--speculative-method"):
        cli_config(4, "eagle")
