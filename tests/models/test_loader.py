"""Checkpoint loading: config parsing, GPTQ/AWQ imports, presets, tokenizers, and bad tensors
(broken files, directories and packages: test_loader_errors.py)."""

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_checkpoints import hf_greedy, make_hf_model, paged_greedy, save_checkpoint
from helpers import assert_close
from safetensors.torch import load_file, save_file

import fastcot
from fastcot.models import ModelConfig, load_config, load_model, load_tokenizer, resolve_dtype
from fastcot.models.llama import ConcatLinear
from fastcot.models.presets import preset_tokenizer

_spec = importlib.util.spec_from_file_location("quant_formats", Path(__file__).parents[1] / "quant" / "formats.py")
formats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(formats)

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def hf_dict(**overrides):
    base = dict(architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
                rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="bfloat16", eos_token_id=[2, 3])
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# --- config ----------------------------------------------------------------------------------

def test_config_transformers4_layout():
    config = ModelConfig.from_hf_config(hf_dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=5e5))
    assert (config.head_dim, config.q_size, config.kv_size) == (16, 64, 32)
    assert config.rope_theta == 5e5 and config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert config.torch_dtype == torch.bfloat16 and config.eos_token_ids == (2, 3)
    assert config.kv_cache_shape(10, 16) == (10, 16, 2, 16)
    assert config.kv_cache_bytes_per_block(16, torch.float16) == 2 * 2 * 16 * 32 * 2


def test_config_transformers5_layout():
    config = ModelConfig.from_hf_config(hf_dict(
        rope_theta=None, torch_dtype=None, dtype="float16", head_dim=32,
        rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    assert config.rope_theta == 5e5 and config.head_dim == 32
    assert config.rope_scaling["rope_type"] == "llama3" and "rope_theta" not in config.rope_scaling
    assert config.torch_dtype == torch.float16


def test_config_biases_per_architecture():
    qwen = ModelConfig.from_hf_config(hf_dict(architectures=["Qwen2ForCausalLM"], sliding_window=4096))
    assert (qwen.qkv_bias, qwen.o_proj_bias, qwen.sliding_window) == (True, False, None)
    llama = ModelConfig.from_hf_config(hf_dict(attention_bias=True))
    assert llama.qkv_bias and llama.o_proj_bias and not llama.mlp_bias
    mistral = ModelConfig.from_hf_config(hf_dict(architectures=None, model_type="mistral", sliding_window=4096))
    assert mistral.architecture == "MistralForCausalLM" and mistral.sliding_window == 4096


@pytest.mark.parametrize("overrides, match", [
    (dict(architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel"),
    (dict(architectures=None, model_type="gpt2"), "model_type='gpt2'"),
    (dict(intermediate_size=None), "intermediate_size"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "yarn"),
    (dict(rope_scaling={"rope_type": "linear"}), "factor"),
    (dict(torch_dtype="float64"), "dtype"),
    (dict(eos_token_id="</s>"), "eos_token_id"),
])
def test_config_errors_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_config(hf_dict(**overrides))


def test_generation_config_eos_ids_take_precedence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_dict()))
    assert load_config(tmp_path).eos_token_ids == (2, 3)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9], "bos_token_id": 5}))
    config = load_config(tmp_path)
    assert config.eos_token_ids == (7, 9) and config.bos_token_id == 5


def test_dtype_selection(hf_checkpoints):
    config = ModelConfig.from_hf_config(hf_dict())
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    assert resolve_dtype("auto", config, cpu) == torch.float32
    assert resolve_dtype("auto", config, gpu) == torch.bfloat16
    assert resolve_dtype("half", config, cpu) == torch.float16
    assert resolve_dtype(torch.bfloat16, config, cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", config, cpu)
    model = load_model(hf_checkpoints["qwen2"].path, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# --- bad checkpoints -------------------------------------------------------------------------

@pytest.fixture
def broken(hf_checkpoints, tmp_path):
    """A writable copy of the unsharded Llama checkpoint: (path, its tensors)."""
    path = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoints["llama"].path, path)
    return path, load_file(path / "model.safetensors")


def test_missing_tensor_is_named(broken):
    path, tensors = broken
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.self_attn.k_proj.weight'"):
        load_model(path, device="cpu")


def test_mismatched_tensor_is_named(broken):
    path, tensors = broken
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match="'model.layers.0.mlp.up_proj.weight'.*shape \\[100, 64\\], expected \\[128, 64\\]"):
        load_model(path, device="cpu")


def test_unexpected_tensor_is_named(broken):
    path, tensors = broken
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"):
        load_model(path, device="cpu")


# --- GPTQ and AWQ checkpoints ----------------------------------------------------------------

def _quantize(w: torch.Tensor, group_size: int, sym: bool, g_idx: torch.Tensor | None):
    """A float `[N, K]` weight -> (q [N, K], zeros [G, N] int, scales [G, N] fp16, W it stands for [N, K])."""
    k = w.shape[1]
    g_idx = torch.arange(k) // group_size if g_idx is None else g_idx.clone()
    order = torch.argsort(g_idx, stable=True)  # quantize_int4 groups contiguous columns
    qw = fastcot.quantize_int4(w[:, order].half(), group_size=group_size, symmetric=sym)
    q = torch.empty(w.shape, dtype=torch.int32)
    q[:, order] = fastcot.kernels.reference.unpack_int4_rows(qw.qweight)
    zeros = torch.full_like(qw.scales, 8, dtype=torch.int32) if qw.zeros is None else qw.zeros.round().int()
    represented = (q - zeros[g_idx].t()).float() * qw.scales.float()[g_idx].t()
    return q, zeros, qw.scales, represented


def make_int4_checkpoint(hf_model, path: Path, method: str, *, group_size=32, sym=False, fmt="gptq",
                         act_order=None, zero_bias=False):
    """Save `hf_model` with every decoder linear stored as GPTQ/AWQ int4. `act_order`: None,
    "shared" (one g_idx per fused group, as GPTQ produces) or "distinct" (k_proj differs).
    Returns a copy of hf_model holding the weights the int4 tensors represent."""
    reference = copy.deepcopy(hf_model)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    g_idx_for = {}
    for name in [n for n in state if n.removesuffix(".weight").endswith(LINEARS)]:
        prefix = name.removesuffix(".weight")
        w = state.pop(name)
        k = w.shape[1]
        g_idx = None
        if act_order is not None:
            key = (prefix.rsplit(".", 1)[0], k, act_order == "distinct" and prefix.endswith("k_proj"))
            if key not in g_idx_for:
                g_idx_for[key] = (torch.randperm(k, generator=gen) // group_size).to(torch.int32)
            g_idx = g_idx_for[key]
        q, zeros, scales, represented = _quantize(w, group_size, sym, g_idx)
        reference.get_submodule(prefix).weight.data.copy_(represented)
        if method == "gptq":
            qweight, qzeros = formats.pack_gptq(q, zeros, g_idx, fmt)
            state[f"{prefix}.g_idx"] = torch.arange(k, dtype=torch.int32) // group_size if g_idx is None else g_idx.clone()
        else:
            qweight, qzeros = formats.pack_awq(q, zeros)
        state.update({f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros, f"{prefix}.scales": scales})
        if zero_bias:
            state[f"{prefix}.bias"] = torch.zeros(w.shape[0], dtype=torch.float16)
    path.mkdir()
    save_file(state, path / "model.safetensors")
    config = hf_model.config.to_dict() | {"architectures": [type(hf_model).__name__], "dtype": "float16"}
    if method == "gptq":
        config["quantization_config"] = dict(quant_method="gptq", bits=4, group_size=group_size, sym=sym,
                                             desc_act=act_order is not None, checkpoint_format=fmt)
    else:
        config["quantization_config"] = dict(quant_method="awq", bits=4, group_size=group_size, zero_point=True,
                                             version="gemm")
    (path / "config.json").write_text(json.dumps(config))
    return reference


INT4_CASES = {
    "gptq-v1-sym-bias": dict(method="gptq", sym=True, fmt="gptq", zero_bias=True),
    "gptq-v2-act-order": dict(method="gptq", fmt="gptq_v2", act_order="shared"),
    "gptq-v2-act-order-distinct": dict(method="gptq", fmt="gptq_v2", act_order="distinct"),
    "awq": dict(method="awq"),
}


@pytest.mark.parametrize("case", list(INT4_CASES))
def test_int4_checkpoint_matches_its_dequantized_weights(case, hf_checkpoints, prompts, tmp_path):
    hf_model = hf_checkpoints["llama"].hf_model
    reference = make_int4_checkpoint(hf_model, tmp_path / case, **INT4_CASES[case])
    model = load_model(tmp_path / case, device="cpu")

    qkv = model.model.layers[0].self_attn.qkv_proj
    if case.endswith("distinct"):  # k_proj's column order differs: q, k, v kept as three linears
        assert isinstance(qkv, ConcatLinear) and len(qkv.parts) == 3
    else:
        assert isinstance(qkv, fastcot.Int4Linear) and qkv.out_features == 128
        assert (qkv.weight.perm is not None) == ("act-order" in case)
    assert isinstance(model.model.layers[1].mlp.gate_up_proj, fastcot.Int4Linear)

    ids, logits = paged_greedy(model, prompts, 6)
    hf_ids, hf_logits = hf_greedy(reference, prompts, 6)
    assert ids == hf_ids
    for ours, theirs in zip(logits, hf_logits):
        assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_int4_checkpoint_errors(hf_checkpoints, tmp_path):
    path = tmp_path / "gptq"
    make_int4_checkpoint(hf_checkpoints["llama"].hf_model, path, "gptq", sym=True)
    with pytest.raises(ValueError, match="quantization='awq' but the checkpoint is quantized with 'gptq'"):
        load_model(path, device="cpu", quantization="awq")
    assert isinstance(load_model(path, device="cpu", quantization="int4").model.layers[0].mlp.down_proj,
                      fastcot.Int4Linear)
    config = json.loads((path / "config.json").read_text())
    for field, value, match in (("bits", 8, "bits must be 4"), ("checkpoint_format", "marlin", "checkpoint_format"),
                                ("quant_method", "bitsandbytes", "bitsandbytes")):
        (path / "config.json").write_text(json.dumps(config | {"quantization_config": {
            **config["quantization_config"], field: value}}))
        with pytest.raises(ValueError, match=match):
            load_model(path, device="cpu")
    del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unexpected tensor .*no quantization_config"):
        load_model(path, device="cpu")
    with pytest.raises(ValueError, match="no quantization_config"):
        load_model(hf_checkpoints["llama"].path, device="cpu", quantization="gptq")
    with pytest.raises(ValueError, match="quantization must be one of"):
        load_model(hf_checkpoints["llama"].path, device="cpu", quantization="int8")


# --- tokenizers and presets ------------------------------------------------------------------

def test_load_tokenizer_from_checkpoint(hf_checkpoints, tmp_path):
    path = tmp_path / "with-tokenizer"
    shutil.copytree(hf_checkpoints["llama"].path, path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(path)
    preset_tokenizer("tiny-random").save_pretrained(str(path))
    tokenizer = load_tokenizer(path)
    assert tokenizer.decode(tokenizer.encode("héllo", add_special_tokens=False)) == "héllo"


def test_tiny_random_preset_generates(prompts):
    model = load_model("tiny-random", device="cpu")
    tokenizer = load_tokenizer("tiny-random")
    config = model.config
    assert len(tokenizer) == config.vocab_size
    assert tokenizer.bos_token_id == config.bos_token_id and tokenizer.eos_token_id in config.eos_token_ids
    ids = tokenizer.encode("Think step by step: ü")
    assert ids[0] == config.bos_token_id and tokenizer.decode(ids, skip_special_tokens=True) == "Think step by step: ü"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    out, _ = paged_greedy(model, [ids, [5, 6, 7]], 4)
    again, _ = paged_greedy(load_model("tiny-random", device="cpu"), [ids, [5, 6, 7]], 4)
    assert out == again  # seeded
    int4 = load_model("tiny-random", device="cpu", quantization="int4")
    assert isinstance(int4.model.layers[0].self_attn.qkv_proj, fastcot.Int4Linear)
    paged_greedy(int4, [ids], 2)


@pytest.mark.parametrize("name, params, layers, hidden", [
    ("llama-3.1-8b-random", 8.03e9, 32, 4096),
    ("llama-3.1-70b-random", 70.55e9, 80, 8192),
])
def test_llama_presets_have_real_shapes(name, params, layers, hidden):
    model = load_model(name, device="meta", dtype="bfloat16")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (layers, hidden, 128256)
    assert config.rope_scaling["rope_type"] == "llama3" and config.eos_token_ids == (128001, 128008, 128009)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=1e-3)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    qkv = load_model(name, device="meta", quantization="int4").model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, fastcot.Int4Linear) and qkv.out_features == hidden + 2 * 8 * 128
    tokenizer = load_tokenizer(name)
    assert len(tokenizer) == 128256 and tokenizer.encode("a")[0] == 128000


def test_unknown_preset_or_bad_quantization():
    with pytest.raises(FileNotFoundError, match="tiny-random"):
        load_model("tiny-randomm", device="cpu")
    with pytest.raises(ValueError, match="no quantization_config"):
        load_model("tiny-random", device="cpu", quantization="gptq")


def test_save_checkpoint_helper_roundtrip(tmp_path):
    """The fixtures' own path: a Mistral saved sharded loads and has every layer."""
    model = make_hf_model("MistralConfig", sliding_window=None)
    path = save_checkpoint(model, tmp_path / "m", "30KB")
    assert len(list(path.glob("*.safetensors"))) > 2
    assert len(load_model(path, device="cpu").model.layers) == 2
