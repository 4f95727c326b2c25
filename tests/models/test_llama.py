"""fastcot's Llama-family model against transformers: greedy ids equal, logits close (float32, CPU)."""

import os

import pytest
import torch
from helpers import assert_close
from hf_checkpoints import VARIANTS, hf_greedy, paged_greedy

import fastcot
from fastcot.layers.attention import AttentionMetadata
from fastcot.models import load_model
from fastcot.models.llama import ConcatLinear

STEPS = 8
LOGITS_TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_transformers(variant, hf_checkpoints, prompts):
    checkpoint = hf_checkpoints[variant]
    model = load_model(checkpoint.path, device="cpu")
    assert model.lm_head_weight.dtype == torch.float32

    ids, logits = paged_greedy(model, prompts, STEPS)
    hf_ids, hf_logits = hf_greedy(checkpoint.hf_model, prompts, STEPS)

    assert ids == hf_ids
    for ours, theirs in zip(logits, hf_logits):
        assert_close(ours, theirs, **LOGITS_TOL)


def test_variants_cover_the_model_features(hf_checkpoints):
    configs = {name: load_model(c.path, device="meta").config for name, c in hf_checkpoints.items()}
    assert configs["llama"].tie_word_embeddings is False
    assert configs["llama-tied-sharded"].tie_word_embeddings is True
    assert configs["llama3-rope"].rope_scaling["rope_type"] == "llama3"
    assert configs["qwen2"].qkv_bias and not configs["qwen2"].o_proj_bias
    assert configs["mistral"].architecture == "MistralForCausalLM"
    assert configs["llama-biases"].o_proj_bias and configs["llama-biases"].mlp_bias


def test_tied_model_has_no_lm_head(hf_checkpoints):
    model = load_model(hf_checkpoints["llama-tied-sharded"].path, device="cpu")
    assert model.lm_head is None
    assert model.lm_head_weight is model.model.embed_tokens.weight


def test_decode_batch_order_does_not_matter(hf_checkpoints, prompts):
    """Sequences are independent: decoding a batch in reverse order gives the same ids."""
    model = load_model(hf_checkpoints["qwen2"].path, device="cpu")
    forward, _ = paged_greedy(model, prompts, 4)
    backward, _ = paged_greedy(model, prompts[::-1], 4)
    assert forward == backward[::-1]


def test_forward_checks_its_arguments(hf_checkpoints):
    model = load_model(hf_checkpoints["llama"].path, device="cpu")
    ids = torch.zeros(3, dtype=torch.int64)
    cache = torch.zeros(model.config.kv_cache_shape(2, 16))
    metadata = AttentionMetadata(slot_mapping=torch.arange(3, dtype=torch.int32),
                                 block_tables=torch.zeros(1, 1, dtype=torch.int32),
                                 seq_lens=torch.tensor([3], dtype=torch.int32),
                                 cu_seqlens_q=torch.tensor([0, 3], dtype=torch.int32), max_query_len=3)
    with pytest.raises(ValueError, match="one \\(k_cache, v_cache\\) pair per layer"):
        model(ids, ids, [(cache, cache)], metadata)
    with pytest.raises(ValueError, match="input_ids and positions"):
        model(ids, ids[:2], [(cache, cache.clone())] * 2, metadata)


def test_int4_on_load_stays_close_to_float(hf_checkpoints, prompts):
    path = hf_checkpoints["llama"].path
    float_model = load_model(path, device="cpu")
    int4_model = load_model(path, device="cpu", quantization="int4")
    layer = int4_model.model.layers[0]
    for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
        assert isinstance(linear, fastcot.Int4Linear)
    assert layer.self_attn.qkv_proj.group_size == 64  # K = 64: 128 does not divide it
    assert layer.mlp.down_proj.group_size == 128
    assert isinstance(int4_model.lm_head, torch.nn.Linear)  # lm_head stays float

    # Loading is exact: the same model with each int4 weight dequantized into an nn.Linear.
    dequantized = load_model(path, device="cpu")
    for name, module in int4_model.named_modules():
        if isinstance(module, fastcot.Int4Linear):
            dequantized.set_submodule(name, _float_linear(module.weight.dequantize(torch.float32), module.bias))
    ids, got = paged_greedy(int4_model, prompts, STEPS)
    ref_ids, ref = paged_greedy(dequantized, prompts, STEPS)
    assert ids == ref_ids
    for ours, theirs in zip(got, ref):
        assert_close(ours, theirs, **LOGITS_TOL)

    # Quantization error, reported: prefill logits (same inputs) against the float model.
    _, float_logits = paged_greedy(float_model, prompts, 1)
    ref, got = torch.cat(float_logits), torch.cat([g[:1] for g in got])
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"\nint4 on load (RTN g64/g128) vs float32, prefill logits: relative error {rel:.3f}")
    assert rel < 0.6  # loose: tiny random models with INIT_RANGE 0.2 amplify weight error


def _float_linear(weight, bias):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight.data.copy_(weight)
    if bias is not None:
        linear.bias.data.copy_(bias)
    return linear


def test_concat_linear_is_the_concatenation():
    parts = [torch.nn.Linear(8, n) for n in (3, 5)]
    x = torch.randn(4, 8)
    assert torch.equal(ConcatLinear(parts)(x), torch.cat([p(x) for p in parts], dim=-1))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU tensors needs the interpreter")
@pytest.mark.parametrize("quantization", [None, "int4"])
def test_triton_backend_matches_torch_backend(quantization):
    """The same model through the Triton kernels (interpreted) and through the torch references."""
    model = load_model("tiny-random", device="cpu", quantization=quantization)
    prompts = [[1, 2, 3, 4, 5], list(range(30, 50))]
    ref_ids, ref = paged_greedy(model, prompts, 2)
    with fastcot.backend("triton"):
        ids, got = paged_greedy(model, prompts, 2)
    assert ids == ref_ids
    for ours, theirs in zip(got, ref):
        assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, bound", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_gpu_model_matches_transformers(dtype, bound, hf_checkpoints, prompts):
    """On the GPU (Triton/CUDA kernels) in 16 bits: logits close to transformers in float32
    (relative norm of the error; 16-bit greedy ids may differ, so HF follows our tokens)."""
    checkpoint = hf_checkpoints["qwen2"]
    model = load_model(checkpoint.path, device="cuda", dtype=dtype)
    ids, logits = paged_greedy(model, prompts, 4)
    for ours, theirs in zip(logits, _hf_logits_along(checkpoint.hf_model, prompts, ids)):
        rel = ((ours.cpu() - theirs).norm() / theirs.norm()).item()
        assert rel < bound, f"{dtype}: relative logits error {rel:.2e}"
    int4 = load_model("tiny-random", device="cuda", dtype=dtype, quantization="int4")
    paged_greedy(int4, prompts, 4)


def _hf_logits_along(hf_model, prompts, generated):
    """transformers' float32 logits along the given continuations (16-bit greedy ids may differ)."""
    out = []
    for prompt, new in zip(prompts, generated):
        full = torch.tensor([prompt + new[:-1]])
        with torch.inference_mode():
            out.append(hf_model(full).logits[0, len(prompt) - 1:].float())
    return out
