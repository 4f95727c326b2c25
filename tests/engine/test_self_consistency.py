"""Parallel samples on a shared prefix: self-consistency voting (and stopping early), aborting
requests mid-stream, KV-block accounting of n samples, chain-of-thought chat, bad inputs."""

import collections
import dataclasses

import pytest
import torch

import fastcot
import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.reasoning import COT_SYSTEM_PROMPT, extract_answer, vote_is_decided

EOS = 257
PREFIX = "Final answer: "
DIGITS = {ord("1"): 0.7, ord("2"): 0.2, ord("3"): 0.1}


class VotingModel(torch.nn.Module):
    """Writes "Final answer: ", then draws a digit (1: 70%, 2: 20%, 3: 10%). A 1 ends there;
    a 2 or 3 is followed by a long tail of "z" (those samples finish later)."""

    def __init__(self, config, prompt_len):
        super().__init__()
        self.config = config
        self.prompt_len = prompt_len
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return torch.stack([input_ids, positions], dim=1)

    def compute_logits(self, hidden):
        logits = torch.full((hidden.shape[0], self.config.vocab_size), -1e4)
        for row, (token, position) in enumerate(hidden.tolist()):
            i = position + 1 - self.prompt_len  # the output index predicted
            if i < len(PREFIX):
                logits[row, ord(PREFIX[i])] = 0.0
            elif i == len(PREFIX):
                for digit, p in DIGITS.items():
                    logits[row, digit] = torch.log(torch.tensor(p))
            elif token == ord("1") or i >= len(PREFIX) + 40:
                logits[row, EOS] = 0.0
            else:
                logits[row, ord("z")] = 0.0
        return logits


PROMPT = [11, 12, 13, 14, 15, 16]


def make_llm(prompt_len=6, num_kv_blocks=512, block_size=4):
    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), num_hidden_layers=1,
                                 max_position_embeddings=8192)
    return LLM.from_model(VotingModel(config, prompt_len), fastcot.models.load_tokenizer("tiny-random"),
                          device="cpu", num_kv_blocks=num_kv_blocks, block_size=block_size,
                          max_model_len=min(8192, num_kv_blocks * block_size))


PARAMS = SamplingParams(temperature=1.0, seed=3, max_tokens=80)


def test_votes_equal_the_answers_of_plain_sampling():
    llm = make_llm()
    result = fastcot.self_consistency(llm, PROMPT, 24, PARAMS, early_stop=False)
    plain = llm.generate([PROMPT], dataclasses.replace(PARAMS, n=24), use_tqdm=False)[0].outputs
    expected = collections.Counter(extract_answer(c.text) for c in plain)
    assert result.counts == dict(expected) and sum(result.counts.values()) == 24
    assert result.answer == expected.most_common(1)[0][0] == "1"
    assert [s.answer for s in result.samples] == [extract_answer(c.text) for c in plain]
    assert not result.stopped_early and {s.finish_reason for s in result.samples} == {"stop"}


def test_early_stop_aborts_the_rest_and_frees_their_blocks():
    llm = make_llm()
    result = fastcot.self_consistency(llm, PROMPT, 24, PARAMS)
    assert result.stopped_early and result.answer == "1"
    reasons = collections.Counter(s.finish_reason for s in result.samples)
    assert reasons["abort"] > 0 and reasons["stop"] >= 13  # 1s finish first and decide the vote
    aborted = [s for s in result.samples if s.finish_reason == "abort"]
    assert all(s.answer is None for s in aborted)
    assert vote_is_decided(result.counts, len(aborted))  # the aborted could not have changed the winner
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks
    assert not llm.scheduler.has_unfinished() and not llm.runner.rows


def test_abort_stops_one_request_and_not_the_others():
    llm = make_llm()
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    seen = collections.defaultdict(str)
    reasons = {}
    for delta in llm.generate_stream([PROMPT, PROMPT], params):
        seen[delta.request_id] += delta.text
        if delta.finish_reason:
            reasons[delta.request_id] = delta.finish_reason
        if delta.request_id == "0" and len(seen["0"]) == 5:
            llm.abort("0")
    assert reasons == {"0": "abort", "1": "length"}
    assert seen["0"] == PREFIX[:5] and len(seen["1"]) > 20
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks


@pytest.mark.parametrize("prompt_len", [4096, 4100])
def test_n_samples_share_the_prompt_blocks(prompt_len):
    block = 16
    llm = make_llm(prompt_len=prompt_len, num_kv_blocks=2000, block_size=block)
    bm, peak = llm.block_manager, [0]
    schedule = llm.scheduler.schedule

    def tracked():
        peak[0] = max(peak[0], bm.num_blocks - bm.num_free_blocks)
        return schedule()

    llm.scheduler.schedule = tracked
    prompt = [(7 * i) % 200 + 3 for i in range(prompt_len)]
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=20, n=32, ignore_eos=True)
    outs = llm.generate([prompt], params, use_tqdm=False)[0].outputs
    one_prompt = -(-prompt_len // block)
    own = sum(-(-(prompt_len % block + len(c.token_ids)) // block) for c in outs)  # each sample's own blocks
    assert peak[0] <= 1.1 * one_prompt + own
    assert peak[0] < 2 * one_prompt  # far below 32 copies of the prompt


def test_chat_with_chain_of_thought():
    llm = make_llm(prompt_len=0)  # (the scripted answer starts at the first output token anyway)
    conversation = [{"role": "user", "content": "What is 1 + 0?"}]
    prompt = llm.chat_prompt(conversation, reasoning="cot")
    assert COT_SYSTEM_PROMPT in llm.tokenizer.decode(prompt)
    plain = llm.tokenizer.decode(llm.chat_prompt(conversation))
    assert COT_SYSTEM_PROMPT not in plain
    llm.model.prompt_len = len(prompt)
    out = llm.chat(conversation, SamplingParams(temperature=0, max_tokens=40), reasoning="cot",
                   use_tqdm=False)[0].outputs[0]
    assert out.text == "1" and out.reasoning_text == ""
    with pytest.raises(ValueError, match="reasoning"):
        llm.chat(conversation, reasoning="tot")


def test_bad_inputs():
    llm = make_llm(num_kv_blocks=10)
    with pytest.raises(ValueError, match="n=8 samples"):
        llm.generate([list(range(3, 23))], SamplingParams(n=8), use_tqdm=False)  # 5 shared + 8 > 10 blocks
    with pytest.raises(ValueError, match="n must be"):
        fastcot.self_consistency(llm, PROMPT, 0)
    with pytest.raises(TypeError, match="extract"):
        fastcot.self_consistency(llm, PROMPT, 2, extract="last line")
