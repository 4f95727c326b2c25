"""GGUF files written with the `gguf` package's writer: single tensors of each type, and tiny
transformers models converted the way llama.cpp's converter does (q/k rows permuted for "llama").
"""

from __future__ import annotations

import numpy as np
import torch
from gguf_blocks import random_blocks

from fastcot.models.presets import _bytes_to_unicode

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def writer(path, arch: str):
    import gguf

    return gguf.GGUFWriter(str(path), arch)


def finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_tensor(w, name: str, value: torch.Tensor, type_name: str, rng: np.random.Generator, *,
               random: bool = False) -> None:
    """`value`: a float tensor `[N, K]` or `[N]`, stored as F32/F16 or quantized by `gguf.quants`
    (BF16, Q4_0, Q4_1, Q8_0); with `random`, random blocks of `type_name` of value's shape."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    if random:
        w.add_tensor(name, random_blocks(type_name, *value.shape, rng), raw_dtype=qtype)
        return
    array = value.detach().float().numpy()
    if type_name == "F32":
        w.add_tensor(name, array)
    elif type_name == "F16":
        w.add_tensor(name, array.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` of q/k rows (HF order -> GGUF order)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def add_tokenizer(w, vocab_size: int) -> None:
    """Byte-level BPE: ids 0..255 the bytes, 256..260 `SPECIALS`, 261 and 262 two merges."""
    tokens = [_bytes_to_unicode()[b] for b in range(256)] + SPECIALS + ["Ġt", "he"]
    tokens += [f"<|reserved_{i}|>" for i in range(len(tokens), vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3] * 5 + [1] * 2 + [3] * (vocab_size - 263))
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_eot_token_id(260)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


LINEAR_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}


def write_model(path, model, arch: str, types: dict[str, str], *, name: str = "tiny", random_types=(),
                seed: int = 0) -> None:
    """Write a transformers Llama/Qwen2/Mistral `model` as GGUF. `types` maps a GGUF tensor role
    ("attn_q", "ffn_down", "token_embd", "output", ...) to its type (default F32); roles whose
    type is in `random_types` get random blocks of that type instead of the model's values
    (K-quants, which `gguf.quants` cannot quantize)."""
    c = model.config
    rng = np.random.default_rng(seed)
    w = writer(path, arch)
    w.add_name(name)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]) if getattr(c, "rope_parameters", None)
                         else float(c.rope_theta))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    add_tokenizer(w, c.vocab_size)
    state = model.state_dict()
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if not c.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors[f"blk.{i}.attn_norm.weight"] = state[p + "input_layernorm.weight"]
        tensors[f"blk.{i}.ffn_norm.weight"] = state[p + "post_attention_layernorm.weight"]
        for hf, role in LINEAR_NAMES.items():
            for kind in ("weight", "bias"):
                if p + f"{hf}.{kind}" not in state:
                    continue
                value = state[p + f"{hf}.{kind}"]
                if arch == "llama" and role in ("attn_q", "attn_k"):
                    heads = c.num_attention_heads if role == "attn_q" else c.num_key_value_heads
                    value = llama_cpp_permute(value, heads)
                tensors[f"blk.{i}.{role}.{kind}"] = value
    for tensor_name, value in tensors.items():
        role = tensor_name.split(".")[-2]
        type_name = "F32" if value.dim() == 1 else types.get(role, "F32")
        add_tensor(w, tensor_name, value, type_name, rng, random=type_name in random_types)
    finish(w)
