"""Tiny random Hugging Face checkpoints (created with transformers, saved as safetensors) and a
paged greedy-decoding driver for comparing fastcot's models with transformers' `generate`.

Nothing is downloaded: every checkpoint is built from a config. Fixtures are in conftest.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fastcot.layers.attention import AttentionMetadata

BLOCK_SIZE = 16
# Big enough init that greedy decoding does not just repeat one token, small enough to stay tame.
INIT_RANGE = 0.2
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=256, max_position_embeddings=512, initializer_range=INIT_RANGE, bos_token_id=1, eos_token_id=2,
)
LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
# name -> (transformers config class name, extra config fields, max shard size or None)
VARIANTS = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=False), None),
    "llama-tied-sharded": ("LlamaConfig", dict(tie_word_embeddings=True), "40KB"),
    "llama3-rope": ("LlamaConfig", dict(rope_scaling=LLAMA3_SCALING, rope_theta=500000.0), None),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), "60KB"),
    "mistral": ("MistralConfig", dict(sliding_window=None, rope_theta=1000000.0), None),
    "llama-biases": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True), None),
}


@dataclass
class Checkpoint:
    path: Path
    hf_model: torch.nn.Module  # the transformers model that was saved, float32, eval mode


def make_hf_model(config_class: str, **fields) -> torch.nn.Module:
    import transformers

    config = getattr(transformers, config_class)(**{**TINY, **fields})
    model_class = {"LlamaConfig": "LlamaForCausalLM", "Qwen2Config": "Qwen2ForCausalLM",
                   "MistralConfig": "MistralForCausalLM"}[config_class]
    torch.manual_seed(1234)
    model = getattr(transformers, model_class)(config).float().eval()
    with torch.no_grad():  # transformers initializes biases and norm weights to constants: randomize
        for name, param in model.named_parameters():  # them so a misplaced one cannot go unnoticed
            if name.endswith(".bias"):
                param.normal_(0.0, INIT_RANGE)
            elif name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def save_checkpoint(model, path: Path, max_shard_size=None) -> Path:
    kwargs = {} if max_shard_size is None else dict(max_shard_size=max_shard_size)
    model.save_pretrained(str(path), **kwargs)
    return path


def paged_greedy(model, prompts: list[list[int]], steps: int, *, block_size: int = BLOCK_SIZE):
    """Greedy-decode `steps` tokens for every prompt, batched: one prefill of all prompts, then
    `steps - 1` batched decode steps over a paged cache (each sequence owns a contiguous run of
    blocks, block 0 left unused). Returns (token ids [B][steps], logits [B] of `[steps, V]`)."""
    config = model.config
    device = next(model.parameters()).device
    batch = len(prompts)
    blocks_per_seq = math.ceil((max(map(len, prompts)) + steps) / block_size)
    dtype = model.lm_head_weight.dtype
    kv_caches = [
        tuple(torch.zeros(config.kv_cache_shape(1 + batch * blocks_per_seq, block_size), dtype=dtype, device=device)
              for _ in range(2))
        for _ in range(config.num_hidden_layers)
    ]
    block_tables = (1 + torch.arange(batch * blocks_per_seq, dtype=torch.int32, device=device)).view(batch, -1)

    def slots(seq: int, positions: torch.Tensor) -> torch.Tensor:
        return block_tables[seq, positions // block_size] * block_size + positions % block_size

    lens = [len(p) for p in prompts]
    positions = [torch.arange(n, device=device) for n in lens]
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=device)
    metadata = AttentionMetadata(
        slot_mapping=torch.cat([slots(b, p) for b, p in enumerate(positions)]).to(torch.int32),
        block_tables=block_tables, seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        cu_seqlens_q=cu_seqlens, max_query_len=max(lens),
    )
    input_ids = torch.tensor([t for p in prompts for t in p], dtype=torch.int64, device=device)
    with torch.inference_mode():
        hidden = model(input_ids, torch.cat(positions), kv_caches, metadata)
        logits = [model.compute_logits(hidden[cu_seqlens[1:].long() - 1])]
        for _ in range(steps - 1):
            next_ids = logits[-1].argmax(-1)
            pos = torch.tensor(lens, dtype=torch.int64, device=device)
            lens = [n + 1 for n in lens]
            metadata = AttentionMetadata(
                slot_mapping=torch.stack([slots(b, pos[b]) for b in range(batch)]).to(torch.int32),
                block_tables=block_tables, seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
            )
            hidden = model(next_ids, pos, kv_caches, metadata)
            logits.append(model.compute_logits(hidden))
    stacked = torch.stack(logits, dim=1)  # [B, steps, V]
    return stacked.argmax(-1).tolist(), list(stacked)


def hf_greedy(hf_model, prompts: list[list[int]], steps: int):
    """transformers' greedy `generate` for each prompt (no eos stop), and the float32 logits
    of the positions that produced the new tokens. Returns (ids [B][steps], logits [B] of `[steps, V]`)."""
    ids_out, logits_out = [], []
    for prompt in prompts:
        input_ids = torch.tensor([prompt])
        with torch.inference_mode():
            generated = hf_model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=steps,
                eos_token_id=None, pad_token_id=0,
            )
            new = generated[0, len(prompt):]
            full = torch.cat([input_ids[0], new[:-1]])[None]
            logits = hf_model(full).logits[0, len(prompt) - 1:].float()
        ids_out.append(new.tolist())
        logits_out.append(logits)
    return ids_out, logits_out
