"""Peers of the end-to-end decode benchmark, on the weights of a fastcot model (no copies).

- `PlainDecoder`: a decode step in plain PyTorch, gpt-fast style: contiguous `[B, Hkv, L, D]`
  caches, `F.linear`, `F.scaled_dot_product_attention`, and fastcot's pure-torch reference
  for RMSNorm, rotary embedding and SiLU-and-multiply (so its numerics are the model's
  definition). It also serves as the correctness check of fastcot's step on the same cache.
- `hf_model` + `hf_generate_steps`: Hugging Face transformers' `LlamaForCausalLM` whose
  parameters are views of the fastcot model's, driven through `generate` with its static
  cache; a stopping criterion timestamps every step.
"""

from __future__ import annotations

import itertools
import time

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def float_weight(linear, dtype) -> torch.Tensor:
    """`[N, K]` weight of an `nn.Linear` (a view) or an `Int4Linear` (dequantized)."""
    w = linear.weight
    if isinstance(w, torch.Tensor):
        return w if w.dtype == dtype else w.to(dtype)
    return w.dequantize(dtype)


def round_like_cache(x: torch.Tensor, kv_dtype) -> torch.Tensor:
    """What a cache of `kv_dtype` stores for x (fp8: saturated, scale 1), back in x's dtype."""
    if kv_dtype == FP8:
        return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8).to(x.dtype)
    return x.to(kv_dtype).to(x.dtype)


def gather_contiguous(cache: torch.Tensor, block_tables: torch.Tensor, length: int, dtype) -> torch.Tensor:
    """`[B, Hkv, length, D]` in `dtype` from a paged `[num_blocks, block_size, Hkv, D]` cache."""
    b, per_seq = block_tables.shape
    _, block_size, hkv, d = cache.shape
    out = torch.empty(b, hkv, length, d, dtype=dtype, device=cache.device)
    for i in range(b):  # one sequence at a time: no [B, L, Hkv, D] temporary in the cache's dtype
        rows = cache[block_tables[i].long()].reshape(per_seq * block_size, hkv, d)[:length]
        out[i] = rows.to(dtype).transpose(0, 1)
    return out


class PlainDecoder:
    """One decode step for B sequences that all sit at the same position `context`.

    `step(input_ids [B], k_caches, v_caches, context, kv_dtype=None) -> logits [B, V] float32`;
    each cache is `[B, Hkv, >= context + 1, D]`; the step writes its keys and values at `context`
    and attends to positions `[0, context]`, as fastcot's step does with `seq_lens = context + 1`.
    With `kv_dtype` (fastcot's cache dtype) the new keys and values are rounded as that cache
    stores them. Float weights are views of the model's; int4 weights are dequantized once here.
    """

    def __init__(self, model, dtype):
        from fastcot.kernels import reference
        from fastcot.ops.rotary import rope_inv_freq

        self.ref, self.config, self.dtype = reference, model.config, dtype
        cfg = self.config
        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append({
                "qkv": float_weight(attn.qkv_proj, dtype), "qkv_bias": _bias(attn.qkv_proj, dtype),
                "o": float_weight(attn.o_proj, dtype), "o_bias": _bias(attn.o_proj, dtype),
                "gate_up": float_weight(mlp.gate_up_proj, dtype), "gate_up_bias": _bias(mlp.gate_up_proj, dtype),
                "down": float_weight(mlp.down_proj, dtype), "down_bias": _bias(mlp.down_proj, dtype),
                "ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight,
            })
        self.embed = model.model.embed_tokens.weight
        self.norm = model.model.norm.weight
        self.lm_head = model.lm_head_weight
        device = self.embed.device
        self.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, device=device)
        self.eps = cfg.rms_norm_eps

    def step(self, input_ids, k_caches, v_caches, context: int, kv_dtype=None) -> torch.Tensor:
        cfg, ref, c = self.config, self.ref, context
        b = input_ids.shape[0]
        positions = torch.full((b,), c, dtype=torch.int64, device=input_ids.device)
        x = F.embedding(input_ids, self.embed)
        for layer, k_cache, v_cache in zip(self.layers, k_caches, v_caches):
            h, _ = ref.rms_norm(x, layer["ln1"], self.eps)
            q, k, v = F.linear(h, layer["qkv"], layer["qkv_bias"]).split([cfg.q_size, cfg.kv_size, cfg.kv_size], -1)
            q = q.reshape(b, cfg.num_attention_heads, cfg.head_dim)
            k = k.reshape(b, cfg.num_key_value_heads, cfg.head_dim)
            q, k = ref.rotary_embedding(positions, q, k, self.inv_freq)
            v = v.reshape(b, cfg.num_key_value_heads, cfg.head_dim)
            if kv_dtype is not None:
                k, v = round_like_cache(k, kv_dtype), round_like_cache(v, kv_dtype)
            k_cache[:, :, c] = k
            v_cache[:, :, c] = v
            out = F.scaled_dot_product_attention(q[:, :, None], k_cache[:, :, : c + 1], v_cache[:, :, : c + 1],
                                                 enable_gqa=True)
            x = x + F.linear(out.reshape(b, cfg.q_size), layer["o"], layer["o_bias"])
            h, _ = ref.rms_norm(x, layer["ln2"], self.eps)
            gate_up = F.linear(h, layer["gate_up"], layer["gate_up_bias"])
            x = x + F.linear(ref.silu_and_mul(gate_up), layer["down"], layer["down_bias"])
        x, _ = ref.rms_norm(x, self.norm, self.eps)
        return F.linear(x, self.lm_head).float()


def _bias(linear, dtype):
    bias = getattr(linear, "bias", None)
    return None if bias is None else bias.to(dtype)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers


def hf_unavailable() -> str | None:
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"transformers not importable: {exc}"
    return None


def hf_model(model, dtype):
    """A transformers `LlamaForCausalLM` (SDPA attention) whose parameters are views of the
    fastcot model's float weights: q/k/v and gate/up are row slices of the fused tensors."""
    import transformers

    cfg = model.config
    if cfg.architecture != "LlamaForCausalLM":
        raise ValueError(f"the HF peer is built for LlamaForCausalLM, not {cfg.architecture}")
    hf_config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id, eos_token_id=list(cfg.eos_token_ids), attention_bias=cfg.qkv_bias,
        mlp_bias=cfg.mlp_bias, attn_implementation="sdpa",
    )
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hf_config)
    device = model.lm_head_weight.device

    def put(module, name, tensor):
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)

    put(hf.model.embed_tokens, "weight", model.model.embed_tokens.weight)
    put(hf.model.norm, "weight", model.model.norm.weight)
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    for ours, theirs in zip(model.model.layers, hf.model.layers):
        a, m = ours.self_attn, ours.mlp
        for linear in (a.qkv_proj, a.o_proj, m.gate_up_proj, m.down_proj):
            if not isinstance(linear, nn.Linear):
                raise TypeError("the HF peer needs float weights, got " + type(linear).__name__)
        qkv = a.qkv_proj.weight
        parts = (("q_proj", slice(0, q)), ("k_proj", slice(q, q + kv)), ("v_proj", slice(q + kv, q + 2 * kv)))
        for name, rows in parts:
            put(getattr(theirs.self_attn, name), "weight", qkv[rows])
            if a.qkv_proj.bias is not None:
                put(getattr(theirs.self_attn, name), "bias", a.qkv_proj.bias[rows])
        put(theirs.self_attn.o_proj, "weight", a.o_proj.weight)
        put(theirs.mlp.gate_proj, "weight", m.gate_up_proj.weight[:inter])
        put(theirs.mlp.up_proj, "weight", m.gate_up_proj.weight[inter:])
        put(theirs.mlp.down_proj, "weight", m.down_proj.weight)
        put(theirs.input_layernorm, "weight", ours.input_layernorm.weight)
        put(theirs.post_attention_layernorm, "weight", ours.post_attention_layernorm.weight)
    if cfg.tie_word_embeddings:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    else:
        put(hf.lm_head, "weight", model.lm_head_weight)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf_config).to(device)  # built on the CPU, as HF does
    leftover = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"HF peer: tensors left on the meta device: {leftover[:5]}")
    if dtype != model.lm_head_weight.dtype:
        raise ValueError(f"HF peer dtype {dtype} differs from the model's {model.lm_head_weight.dtype}")
    return hf.eval()


class _StepClock:
    """A stopping criterion that never stops and timestamps every generated token."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def hf_generate_steps(hf, *, batch: int, context: int, new_tokens: int, compile: bool, prefill_chunk: int | None,
                      seed: int) -> dict:
    """Greedy `generate` from `batch` random prompts of `context` tokens with a static cache.

    Returns {"step_s": seconds of each decode step (token 2 onwards), "prefill_s": time to the
    first token, "compiled_graphs": graphs dynamo compiled during the call}.
    """
    from transformers import StoppingCriteriaList

    device = hf.lm_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.randint(0, min(hf.config.vocab_size, 256), (batch, context), generator=gen, device=device)
    clock = _StepClock(device)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
              "cache_implementation": "static", "stopping_criteria": StoppingCriteriaList([clock]),
              "pad_token_id": hf.config.eos_token_id[0], "disable_compile": not compile}
    if prefill_chunk and context > prefill_chunk:
        # A static cache's prefill mask is [B, chunk, cache length]: 128k x 128k would not fit.
        kwargs["prefill_chunk_size"] = prefill_chunk
    before = _dynamo_graphs()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    if out.shape[1] != context + new_tokens:
        raise RuntimeError(f"generate returned {out.shape[1] - context} new tokens, asked for {new_tokens}")
    times = clock.times
    return {"step_s": [b - a for a, b in itertools.pairwise(times)], "prefill_s": times[0] - start,
            "compiled_graphs": _dynamo_graphs() - before}


def _dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])
