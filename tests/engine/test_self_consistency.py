"""Parallel samples on a shared prefix: self-consistency voting (and stopping early), aborting
requests mid-stream, KV-block accounting of n samples, chain-of-thought chat, bad inputs."""

import collections
import dataclasses
import math

import pytest
import torch
from helpers import import_benchmark

import fastcot
import fastcot.models
import fastcot.reasoning.confidence
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


# ---- DeepConf (confidence=...) on a task whose answers and confidences are known -------------

deepconf_task = import_benchmark("deepconf_task")
FULL = {"1": deepconf_task.completion_length(True), "2": deepconf_task.completion_length(False),
        "3": deepconf_task.completion_length(False)}  # by plan
TASK_PARAMS = SamplingParams(temperature=1.0, seed=5, max_tokens=200)


def test_deepconf_offline_keeps_the_top_eta_and_weighs_votes():
    llm, prompt = deepconf_task.make_llm("trap")
    result = fastcot.self_consistency(llm, prompt, 40, TASK_PARAMS, confidence=dict(mode="offline", eta=30, window=8),
                                      use_tqdm=False)
    samples = result.samples
    assert all(s.finish_reason == "stop" and s.num_tokens == s.confidence.num_tokens == FULL[s.text[0]]
               for s in samples)
    lowest = [s.confidence.lowest for s in samples]
    kept = sorted(range(40), key=lambda i: (-lowest[i], i))[:12]  # ceil(30% of 40)
    assert [s.index for s in samples if s.voted] == sorted(i for i in kept if samples[i].answer is not None)
    totals = {}
    for i in sorted(kept):
        totals[samples[i].answer] = totals.get(samples[i].answer, 0.0) + lowest[i]
    assert result.weights == pytest.approx(totals)
    assert result.answer == max(totals, key=totals.get) == deepconf_task.CORRECT
    plain, _ = fastcot.reasoning.majority_vote([s.answer for s in samples])
    assert plain == "2"  # the trap: the unsure answer is the plain majority
    assert (result.num_tokens, result.num_saved_tokens, result.stopped_early) == \
        (sum(FULL[s.text[0]] for s in samples), 0, False)
    # Unsure plans are flat over 20 letters: their lowest group confidence is log 20.
    for s in samples:
        if s.text[0] in "23":
            assert s.confidence.lowest == pytest.approx(math.log(20), abs=1e-4)


def test_deepconf_online_stops_unsure_paths_and_frees_their_blocks():
    llm, prompt = deepconf_task.make_llm("agree")
    before = llm.engine.stats().generation_tokens
    config = dict(mode="online", warmup=16, window=8, interval=1)
    result = fastcot.self_consistency(llm, prompt, 48, TASK_PARAMS, confidence=config, early_stop=False,
                                      use_tqdm=False)
    warm, later = result.samples[:16], result.samples[16:]
    assert all(s.finish_reason == "stop" for s in warm)
    assert result.threshold == pytest.approx(fastcot.reasoning.confidence.confidence_threshold(
        [s.confidence.lowest for s in warm], 10))
    for s in warm:
        assert s.voted == (s.answer is not None and s.confidence.lowest >= result.threshold)
    stopped = [s for s in later if s.finish_reason == "low_confidence"]
    assert stopped and all(s.text[0] == "1" for s in later if s.finish_reason != "low_confidence")
    for s in later:
        if s.finish_reason == "low_confidence":
            assert s.confidence.stop_index == s.num_tokens < FULL[s.text[0]] and not s.voted  # at that very token
        else:
            assert s.finish_reason == "stop" and s.confidence.lowest >= result.threshold and s.voted
    for s in later:
        if s.text[0] in "23":  # every unsure path stops at its first full window of tail
            assert s.finish_reason == "low_confidence" and s.num_tokens == 9
    assert result.answer == deepconf_task.CORRECT and not result.stopped_early
    assert result.num_tokens == sum(s.num_tokens for s in result.samples) == \
        llm.engine.stats().generation_tokens - before
    mean_full = sum(s.num_tokens for s in result.samples if s.finish_reason == "stop") / sum(
        s.finish_reason == "stop" for s in result.samples)
    assert result.num_saved_tokens == round(sum(mean_full - s.num_tokens for s in stopped))
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks and not llm.runner.rows
    assert not llm.runner.confidence.stash


@pytest.mark.parametrize("config", [dict(window=8), dict(window=8, warmup=8, eta=90, consensus=0.6)])
def test_deepconf_online_vote_stops_at_consensus(config):
    """Defaults: the warm-up paths above the threshold agree, nothing more runs. A looser
    threshold lets every path vote: the later request is aborted once "1" holds 60%."""
    llm, prompt = deepconf_task.make_llm("agree")
    result = fastcot.self_consistency(llm, prompt, 64, TASK_PARAMS, use_tqdm=False, confidence=config)
    assert result.stopped_early and result.answer == "1"
    assert result.weights["1"] >= config.get("consensus", 0.95) * sum(result.weights.values())
    unfinished = [s for s in result.samples if s.finish_reason in (None, "abort")]
    assert len(result.samples) == 64 and unfinished and all(not s.voted for s in unfinished)
    assert all(s.num_tokens < FULL[s.text[0]] for s in unfinished if s.text)  # cut short (or never started)
    assert result.num_tokens == sum(s.num_tokens for s in result.samples)
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks


def test_deepconf_bad_settings():
    llm, prompt = deepconf_task.make_llm("agree")
    with pytest.raises(ValueError, match="eta"):
        fastcot.self_consistency(llm, prompt, 4, TASK_PARAMS, confidence={"eta": 0})
    with pytest.raises(TypeError, match="confidence"):
        fastcot.self_consistency(llm, prompt, 4, TASK_PARAMS, confidence=0.5)
