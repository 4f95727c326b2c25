"""SamplingParams parity with vLLM, each against its definition: presence and frequency
penalties (by hand on the logits), top_k=-1, max_tokens=None, skip_special_tokens,
prompt_logprobs (against transformers), and defaults from generation_config.json."""

import dataclasses
import json
import shutil

import pytest
import torch
from helpers import load_test_module

import fastcot.models
from fastcot import LLM, SamplingParams
from fastcot.engine.sampling import Sampler, SamplingTensors, apply_output_penalties, output_counts

VOCAB = 64


def hand_penalized(logits, outputs, presence, frequency):
    """OpenAI's definition, one element at a time."""
    out = logits.clone()
    for b, ids in enumerate(outputs):
        for v in range(logits.shape[1]):
            count = ids.count(v)
            out[b, v] = logits[b, v] - frequency[b] * count - (presence[b] if count > 0 else 0.0)
    return out


def test_output_penalties_match_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, VOCAB, generator=gen) * 3
    outputs = [[1, 1, 1, 5], [], [7, 9, 7], [0, 63, 63]]
    presence, frequency = [0.5, -1.5, 2.0, 0.0], [0.25, 0.0, -0.5, 1.75]
    got = apply_output_penalties(logits, output_counts(outputs, VOCAB), torch.tensor(presence),
                                 torch.tensor(frequency))
    torch.testing.assert_close(got, hand_penalized(logits, outputs, presence, frequency))
    params = [SamplingParams(temperature=0, presence_penalty=p, frequency_penalty=f)
              for p, f in zip(presence, frequency)]
    tensors = SamplingTensors.from_params(params, output_lens=[len(o) for o in outputs])
    assert tensors.do_output_penalty and not tensors.do_penalty
    sampled = Sampler()(logits, tensors, output_counts=output_counts(outputs, VOCAB))
    assert sampled.tolist() == hand_penalized(logits, outputs, presence, frequency).argmax(1).tolist()
    with pytest.raises(ValueError, match="output_counts must be a"):
        Sampler()(logits, tensors)


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [-2.5, 2.01, float("nan"), "1"])
def test_penalty_range(field, value):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field} must be in \[-2, 2\]"):
        SamplingParams(**{field: value})


class FixedLogits(torch.nn.Module):
    """The same logits at every position (`base`), so a greedy completion is decided by the
    penalties alone: each step picks argmax(base - penalties of the output so far)."""

    def __init__(self, config, base):
        super().__init__()
        self.config, self.base = config, base
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return torch.zeros(input_ids.shape[0], 1)

    def compute_logits(self, hidden):
        return self.base.expand(hidden.shape[0], -1).clone()


def fixed_llm(base, **kwargs):
    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), vocab_size=VOCAB, num_hidden_layers=1,
                                 max_position_embeddings=256)
    return LLM.from_model(FixedLogits(config, base), fastcot.models.load_tokenizer("tiny-random"), device="cpu",
                          num_kv_blocks=64, block_size=4, **kwargs)


def simulate(base, presence, frequency, steps):
    out = []
    for _ in range(steps):
        out.append(int(hand_penalized(base[None], [out], [presence], [frequency])[0].argmax()))
    return out


@pytest.mark.parametrize("presence, frequency", [(0.0, 0.6), (1.1, 0.0), (0.4, 0.3), (-0.2, 0.9)])
def test_penalties_over_a_generation_follow_the_definition(presence, frequency):
    gen = torch.Generator().manual_seed(1)
    base = torch.sort(torch.rand(VOCAB, generator=gen) * 2, descending=True).values  # close logits: penalties matter
    llm = fixed_llm(base, max_num_batched_tokens=3)
    params = SamplingParams(temperature=0, max_tokens=25, ignore_eos=True, presence_penalty=presence,
                            frequency_penalty=frequency)
    plain = SamplingParams(temperature=0, max_tokens=25, ignore_eos=True)
    # In a batch with unpenalized rows, n > 1, and prompts that include the penalized tokens
    # (prompt tokens do not count: the penalties are over the output).
    outs = llm.generate([[1, 2, 3], [0, 1, 2, 3, 4, 5, 6], [9]], [params, dataclasses.replace(params, n=2), plain],
                        use_tqdm=False)
    expected = simulate(base, presence, frequency, 25)
    assert [c.token_ids for o in outs[:2] for c in o.outputs] == [expected] * 3
    assert outs[2].outputs[0].token_ids == [0] * 25 and len(set(expected)) > 1


def test_top_k_minus_one_is_off():
    gen = torch.Generator().manual_seed(2)
    llm = fixed_llm(torch.randn(VOCAB, generator=gen))
    draws = [llm.generate([[1, 2]], SamplingParams(temperature=1.0, seed=3, max_tokens=30, top_k=k), use_tqdm=False)
             [0].outputs[0].token_ids for k in (-1, 0)]
    assert draws[0] == draws[1] and len(set(draws[0])) > 5


def test_max_tokens_none_runs_to_max_model_len():
    llm = fixed_llm(torch.arange(VOCAB, dtype=torch.float32), max_model_len=40)
    (out,) = llm.generate([[1, 2, 3, 4, 5]], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True),
                          use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 35 and out.outputs[0].finish_reason == "length"


def test_skip_special_tokens():
    scripted_llm = load_test_module("engine/test_streaming.py").scripted_llm
    tokenizer = fastcot.models.load_tokenizer("tiny-random")
    special = tokenizer.convert_tokens_to_ids("<|start_header_id|>")
    script = [ord("a"), special, ord("b"), ord(" "), special]
    llm = scripted_llm(script)
    for skip, text in ((True, "ab "), (False, "a<|start_header_id|>b <|start_header_id|>")):
        params = SamplingParams(temperature=0, max_tokens=5, skip_special_tokens=skip)
        (out,) = llm.generate([[10, 11, 12]], params, use_tqdm=False)
        assert out.outputs[0].text == text == tokenizer.decode(script, skip_special_tokens=skip)
        assert "".join(d.text for d in llm.generate_stream([[10, 11, 12]], params)) == text


@pytest.mark.parametrize("budget", [8192, 5])
def test_prompt_logprobs_match_transformers(llama_checkpoint, budget):
    path, hf_model = llama_checkpoint
    llm = LLM(str(path), device="cpu", num_kv_blocks=64, max_num_batched_tokens=budget)
    prompt = [(11 * i) % 250 + 3 for i in range(37)]
    llm.generate([prompt], SamplingParams(max_tokens=2), use_tqdm=False)  # its blocks are now cached
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=4, n=2)
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    assert out.num_cached_tokens == 0  # scoring the prompt computes all of it
    with torch.inference_mode():
        expected = hf_model(torch.tensor([prompt])).logits[0].double().log_softmax(-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        entry, row = out.prompt_logprobs[i], expected[i - 1]
        top = row.topk(4).indices.tolist()
        assert set(entry) == {prompt[i], *top} and next(iter(entry)) == prompt[i]
        for token, lp in entry.items():
            assert lp.logprob == pytest.approx(row[token].item(), abs=1e-4)
            assert lp.rank == 1 + int((row > row[token] + 1e-6).sum())
            assert lp.decoded_token == llm.get_tokenizer().decode([token])


def test_generation_config_defaults(llama_checkpoint, tmp_path):
    path = shutil.copytree(llama_checkpoint[0], tmp_path / "model")
    (path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.0, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 7,
         "do_sample": True, "eos_token_id": 2}))
    llm = LLM(str(path), device="cpu", num_kv_blocks=64)
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_k, defaults.top_p, defaults.repetition_penalty,
            defaults.max_tokens) == (0.0, 5, 0.9, 1.2, 7)
    prompt = [5, 6, 7, 8]
    (out,) = llm.generate([prompt], use_tqdm=False)
    explicit = SamplingParams(temperature=0, top_k=5, top_p=0.9, repetition_penalty=1.2, max_tokens=7)
    assert out.outputs[0].token_ids == llm.generate([prompt], explicit, use_tqdm=False)[0].outputs[0].token_ids
    library = LLM(str(path), device="cpu", num_kv_blocks=64, generation_config="vllm")
    assert library.get_default_sampling_params() == SamplingParams()
    (path / "generation_config.json").write_text('{"temperature": -1}')
    with pytest.raises(ValueError, match="SamplingParams.temperature must be >= 0"):
        LLM(str(path), device="cpu", num_kv_blocks=64)
    (path / "generation_config.json").write_text('{"temperature": ')
    with pytest.raises(ValueError, match="generation_config.json is not valid JSON"):
        LLM(str(path), device="cpu", num_kv_blocks=64)
    with pytest.raises(ValueError, match="generation_config must be 'auto' or 'vllm'"):
        LLM(str(path), device="cpu", num_kv_blocks=64, generation_config="hf")
