"""`apply_fastcot` on tiny transformers Llama/Qwen2/Mistral models: greedy `generate` matches the
unpatched model (float32), int4 within quantization error, gradients, save/load, bad input."""

import json

import pytest
import torch
from conftest import clone, make_model
from helpers import assert_close
from torch import nn

import fastcot
import fastcot.integrations.transformers as fct
from fastcot.layers import Int4Linear
from fastcot.quant.importers import to_gptq

NEW_TOKENS = 12
PATCHES = {
    "attention": dict(attention=True, norms=False, mlp=False),
    "norms+mlp": dict(attention=False, norms=True, mlp=True),
    "all": dict(attention=True, norms=True, mlp=True),
}


def greedy(model, batch, new_tokens=NEW_TOKENS):
    ids, mask = batch
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("patches", list(PATCHES))
def test_float32_greedy_tokens_equal_unpatched(arch, patches, batch):
    reference = make_model(arch)
    patched = fct.apply_fastcot(clone(reference), **PATCHES[patches])
    assert (patched.config._attn_implementation == "fastcot") == PATCHES[patches]["attention"]
    expected = greedy(reference, batch)
    assert len(set(expected[0].tolist())) > 3  # not a degenerate repetition
    assert torch.equal(greedy(patched, batch), expected)
    ids, mask = batch
    with torch.no_grad():
        real = mask.bool()
        assert_close(patched(ids, attention_mask=mask).logits[real], reference(ids, attention_mask=mask).logits[real],
                     atol=1e-5, rtol=1e-5)


def dequantized_twin(model):
    """The int4 model's weights as plain float linears in an unpatched model."""
    twin = make_model(model.config.model_type)
    state = twin.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear):
            state[f"{name}.weight"] = module.weight.dequantize(torch.float32)
    twin.load_state_dict(state)
    return twin


def test_int4_within_quantization_error(arch, batch):
    reference = make_model(arch)
    quantized = fct.apply_fastcot(clone(reference), quantization="int4")
    layers = [m for m in quantized.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 7 * reference.config.num_hidden_layers
    assert {m.group_size for m in layers} == {64}  # 128 does not divide K=64: the model-wide fallback
    assert isinstance(quantized.lm_head, nn.Linear)
    # Kernel error: exactly the dequantized weights' model, token for token.
    assert torch.equal(greedy(quantized, batch), greedy(dequantized_twin(quantized), batch))
    # Quantization error against the float model: per weight, round to nearest at g64 on these
    # Gaussian weights is ~9%; through 14 quantized matmuls of a random (chaotic) model the
    # logits move by a few times that.
    weight_err = max(
        ((m.weight.dequantize(torch.float32) - reference.get_submodule(name).weight).norm()
         / reference.get_submodule(name).weight.norm()).item()
        for name, m in quantized.named_modules() if isinstance(m, Int4Linear)
    )
    ids, mask = batch
    with torch.no_grad():
        got, want = quantized(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits
    rel = ((got - want).norm() / want.norm()).item()
    assert 0 < weight_err < 0.12 and rel < 6 * weight_err, f"int4 weights {weight_err:.3f}, logits {rel:.3f}"


def test_gradients_flow_through_int4_norms_and_mlp():
    reference = make_model("llama")
    quantized = fct.apply_fastcot(clone(reference), quantization="int4", attention=False)
    twin = dequantized_twin(quantized)
    ids = torch.randint(3, 256, (2, 7))
    grads = []
    for model in (quantized, twin):
        embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
        model(inputs_embeds=embeds).logits.square().mean().backward()
        grads.append((embeds.grad, model.model.layers[0].input_layernorm.weight.grad))
    assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-4)
    assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-4)  # norm weights still train


def test_attention_refuses_gradients():
    model = fct.apply_fastcot(make_model("llama"), attention=True, norms=False, mlp=False)
    embeds = model.model.embed_tokens(torch.randint(3, 256, (1, 5))).detach().requires_grad_(True)
    with pytest.raises(ValueError, match="inference and has no backward"):
        model(inputs_embeds=embeds)


def test_from_pretrained_with_fastcot_attention(tmp_path, batch):
    import transformers

    reference = make_model("qwen2")
    reference.save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="fastcot",
                                                              dtype=torch.float32)
    assert model.config._attn_implementation == "fastcot"
    assert torch.equal(greedy(model.eval(), batch), greedy(reference, batch))


def test_save_then_load_round_trips(tmp_path, batch):
    from fastcot.models.presets import _TINY_SPECIALS, byte_tokenizer

    quantized = fct.apply_fastcot(make_model("llama"), quantization="int4")
    expected = greedy(quantized, batch)
    quantized.save_pretrained(tmp_path)
    byte_tokenizer(261, _TINY_SPECIALS).save_pretrained(tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "gptq", "bits": 4, "group_size": 64, "checkpoint_format": "gptq_v2",
                  "sym": False, "desc_act": False, "lm_head": False}
    loaded = fct.load_pretrained(tmp_path)
    assert loaded.config._attn_implementation == "fastcot"
    assert isinstance(loaded.model.layers[1].mlp.down_proj, Int4Linear)
    assert torch.equal(greedy(loaded, batch), expected)
    # fastcot's own engine reads the same directory (GPTQ import, fused q/k/v and gate/up).
    llm = fastcot.LLM(str(tmp_path), num_kv_blocks=64, gc_freeze=False)
    params = fastcot.SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    prompt = batch[0][0].tolist()
    out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    engine_expected = quantized.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                         pad_token_id=0, eos_token_id=None)[0, len(prompt):]
    assert list(out) == engine_expected.tolist()


class StandInGPTQLinear(nn.Module):
    """What a GPTQ backend leaves in a transformers model: the checkpoint's tensors as attributes."""

    def __init__(self, tensors, bias):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.bias = bias


def test_keeps_gptq_weights_the_model_holds(batch):
    model = make_model("mistral")
    expected_weights = {}
    for i, layer in enumerate(model.model.layers):
        for name in fct.LINEARS:
            linear = layer.get_submodule(name)
            weight = fastcot.quantize_int4(linear.weight.detach(), group_size=32)
            expected_weights[f"{i}.{name}"] = weight.dequantize(torch.float32)
            layer.set_submodule(name, StandInGPTQLinear(to_gptq(weight), None))
    model.config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": False,
                                        "checkpoint_format": "gptq_v2"}
    fct.apply_fastcot(model)  # no quantization asked: the held GPTQ weights are kept as they are
    for i, layer in enumerate(model.model.layers):
        for name in fct.LINEARS:
            module = layer.get_submodule(name)
            assert isinstance(module, Int4Linear)
            assert torch.equal(module.weight.dequantize(torch.float32), expected_weights[f"{i}.{name}"])
    assert greedy(model, batch).shape == (2, NEW_TOKENS)


def test_bad_input():
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match=r"model_type='gpt2'"):
        fct.apply_fastcot(gpt2)
    with pytest.raises(ValueError, match="quantization must be one of"):
        fct.apply_fastcot(make_model("llama"), quantization="int8")
    with pytest.raises(ValueError, match="group_size must be one of"):
        fct.apply_fastcot(make_model("llama"), quantization="int4", group_size=100)
    with pytest.raises(ValueError, match="hidden_act is 'gelu'"):
        fct.apply_fastcot(make_model("llama", hidden_act="gelu"))


def test_version_check(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.40.2")
    with pytest.raises(ImportError, match="needs transformers >= 4.56.*found 4.40.2"):
        fct._check_version()
