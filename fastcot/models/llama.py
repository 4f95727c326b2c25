"""The Llama-family decoder (Llama 2/3/3.1/3.2, Qwen2/2.5, Mistral) on `fastcot.layers` and `fastcot.ops`.

One definition serves every architecture in `ModelConfig`; they differ only in numbers and
biases. Module paths mirror Hugging Face's (`model.layers.3.self_attn.o_proj`) except that q/k/v
are fused into `qkv_proj` (rows q, then k, then v) and gate/up into `gate_up_proj` (rows gate,
then up), as vLLM does. Decoder linears are `nn.Linear`, `fastcot.Int4Linear`, or a
`ConcatLinear` of either when a checkpoint's parts cannot be fused (see `fastcot.models.loader`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastcot import ops
from fastcot.layers import PagedAttention
from fastcot.layers.attention import AttentionMetadata
from fastcot.models.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    """HF LlamaRMSNorm through `fastcot.ops.rms_norm`; with `residual`, the residual add is
    fused in front and `residual` is updated in place to the new residual stream."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps, residual=residual)


class ConcatLinear(nn.Module):
    """Linears over the same input whose outputs are concatenated: the unfused form of a
    fused projection, for checkpoint parts that cannot share one weight (act-order int4 parts
    with different column orders, or a float part beside int4 parts)."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def _linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer.requires_grad_(False)
    return layer


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.rope_theta, self.rope_scaling = config.rope_theta, config.rope_scaling
        self.qkv_proj = _linear(config.hidden_size, self.q_size + 2 * self.kv_size, config.qkv_bias)
        self.o_proj = _linear(self.q_size, config.hidden_size, config.o_proj_bias)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions, hidden, kv_cache: KVCache, metadata: AttentionMetadata) -> torch.Tensor:
        tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # Views of the fused output (row stride q+2kv); the ops take strided tokens and heads.
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        q, k = ops.rotary_embedding(
            positions, q, k, head_dim=self.head_dim, rope_theta=self.rope_theta, rope_scaling=self.rope_scaling
        )
        out = self.attn(q, k, v, kv_cache, metadata)
        return self.o_proj(out.view(tokens, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = _linear(config.hidden_size, 2 * config.intermediate_size, config.mlp_bias)
        self.down_proj = _linear(config.intermediate_size, config.hidden_size, config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual, kv_cache: KVCache, metadata: AttentionMetadata):
        """`(hidden, residual) -> (hidden, residual)`: the residual add of each block is deferred
        into the next norm (fused), so `hidden` is the block's output before that add. On the
        first layer `residual` is None and `hidden` (the embeddings) becomes the residual."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, metadata)
        hidden = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.requires_grad_(False)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, kv_caches: list[KVCache], metadata: AttentionMetadata):
        # A fresh tensor: the first layer adopts it as the residual stream, updated in place.
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, metadata)
        return self.norm(hidden, residual)


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM over a paged KV cache.

    `forward(input_ids [T] int64, positions [T] int64, kv_caches, metadata) -> hidden [T, H]`
    runs one step (prefill or decode, as `metadata` says) over the packed tokens of a batch,
    writing their keys and values into `kv_caches` (one `(k_cache, v_cache)` pair per layer,
    each `[num_blocks, block_size, Hkv, D]`, see `ModelConfig.kv_cache_shape`).
    `compute_logits(hidden [N, H]) -> [N, vocab]` float32: apply it to the rows that are
    sampled from (the last token of each sequence in a prefill), not to every token.

    Build one with `fastcot.models.load_model` (checkpoint or preset); the constructor leaves
    weights uninitialized in the default init of torch (use it under `torch.device("meta")`).

    Example::

        model = fastcot.models.load_model("tiny-random", device="cpu")
        hidden = model(input_ids, positions, kv_caches, metadata)
        next_ids = model.compute_logits(hidden[last_rows]).argmax(-1)
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = None if config.tie_word_embeddings else _linear(config.hidden_size, config.vocab_size, False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                metadata: AttentionMetadata) -> torch.Tensor:
        if len(kv_caches) != self.config.num_hidden_layers:
            raise ValueError(
                f"kv_caches must hold one (k_cache, v_cache) pair per layer ({self.config.num_hidden_layers}), "
                f"got {len(kv_caches)}"
            )
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and positions must both be [T], got {list(input_ids.shape)} and {list(positions.shape)}"
            )
        return self.model(input_ids, positions, kv_caches, metadata)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head_weight).float()
