"""The "fastcot" attention implementation for Hugging Face transformers, on fastcot's paged kernels.

Registered (by `fastcot.integrations.transformers`) with transformers' `AttentionInterface` and
`AttentionMaskInterface` under the name "fastcot", so `from_pretrained(...,
attn_implementation="fastcot")` and `model.set_attn_implementation("fastcot")` select it.

A transformers cache hands the attention function each layer's whole key/value history as
`[B, Hkv, S, D]` tensors. This function copies them once into a paged cache of 16-token blocks
(the layout fastcot's kernels read) and runs `fastcot.ops.paged_decode_attention` (one new
token per sequence) or `paged_prefill_attention` (several). The mask is transformers' boolean
`sdpa_mask` (registered under "fastcot" too, else transformers would pass no mask at all);
what the kernels express is causal attention over each sequence's keys from its first
unpadded one: no padding, or left padding as `generate` makes. Any other mask (right or
inner padding, packed sequences, a sliding window narrower than the context, custom 4-D
masks) raises ValueError naming the problem rather than attending to the wrong keys. Query
rows that are padding get zeros. Inference only: inputs that require grad raise.
"""

from __future__ import annotations

import weakref

import torch

from fastcot import ops

BLOCK_SIZE = 16
# The last mask checked: [weakref to it, its version counter, its key starts]. transformers
# builds one mask per forward and hands it to every layer, so it is checked once.
_mask_cache: list = [None, -1, None]


def fastcot_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                              is_causal=None, **kwargs):
    """transformers' attention-function contract: `query [B, Hq, L, D]`, `key`/`value`
    `[B, Hkv, S, D]` (the cached history plus the new tokens, which are the last L), mask
    `[B, 1, L, S]` bool or None; returns `(out [B, L, Hq, D], None)`."""
    _check_call(module, query, key, value, dropout, is_causal, kwargs)
    batch, q_heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    starts = _key_starts(attention_mask, batch, q_len, kv_len, query.device)
    window = kwargs.get("sliding_window")
    if window is not None and kv_len > window:
        raise ValueError(f"fastcot attention attends to the whole context; sliding_window={window} is narrower "
                         f"than its {kv_len} keys (use attn_implementation='sdpa')")
    k_cache, v_cache, block_tables = _paged_copy(key, value, starts)
    seq_lens = (kv_len - starts).to(torch.int32)
    if q_len == 1:
        out = ops.paged_decode_attention(query[:, :, 0], k_cache, v_cache, block_tables, seq_lens, scale=scaling)
        return out.unsqueeze(1), None
    # Sequence b's new tokens are its last n_b query rows (the others are left padding).
    new_tokens = torch.clamp(seq_lens, max=q_len)
    rows = torch.arange(q_len, device=query.device)[None, :] >= (q_len - new_tokens)[:, None]  # [B, L]
    q_packed = query.transpose(1, 2)[rows]  # [T, Hq, D]
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=query.device)
    cu_seqlens[1:] = torch.cumsum(new_tokens, 0)
    packed = ops.paged_prefill_attention(q_packed, k_cache, v_cache, block_tables, cu_seqlens, seq_lens,
                                         scale=scaling, causal=True)
    if bool(rows.all()):
        return packed.view(batch, q_len, q_heads, head_dim), None
    out = query.new_zeros(batch, q_len, q_heads, head_dim)
    out[rows] = packed
    return out, None


def _check_call(module, query, key, value, dropout, is_causal, kwargs) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ValueError("fastcot attention is for inference and has no backward; run under torch.no_grad() "
                         "or use attn_implementation='sdpa' for training")
    if dropout and getattr(module, "training", False):
        raise ValueError(f"fastcot attention has no dropout, got dropout={dropout} in training mode")
    if is_causal is False or getattr(module, "is_causal", True) is False:
        raise ValueError("fastcot attention is causal only (decoder self-attention)")
    for name in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise ValueError(f"fastcot attention does not support {name}")
    if hasattr(module, "sinks"):
        raise ValueError("fastcot attention does not support attention sinks")
    if query.dim() != 4 or key.shape != value.shape or key.shape[0] != query.shape[0]:
        raise ValueError(f"expected query [B, Hq, L, D] and key/value [B, Hkv, S, D], got {list(query.shape)}, "
                         f"{list(key.shape)}, {list(value.shape)}")
    if query.shape[2] > key.shape[2]:
        raise ValueError(f"more queries ({query.shape[2]}) than keys ({key.shape[2]})")


def _key_starts(mask, batch: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """First attended key of each sequence, int64 `[B]`, after checking that the mask is causal
    attention over the keys from there on (for every query row that is not padding)."""
    if mask is None:
        if 1 < q_len != kv_len:
            raise ValueError(f"no attention mask with {q_len} queries over {kv_len} keys: causal alignment is "
                             "ambiguous; pass the mask transformers builds for attn_implementation='fastcot'")
        return torch.zeros(batch, dtype=torch.long, device=device)
    cached_mask, version, starts = _mask_cache
    if cached_mask is not None and cached_mask() is mask and version == mask._version:
        return starts
    starts = _check_mask(mask, batch, q_len, kv_len)
    _mask_cache[:] = [weakref.ref(mask), mask._version, starts]
    return starts


def _check_mask(mask: torch.Tensor, batch: int, q_len: int, kv_len: int) -> torch.Tensor:
    if mask.dim() != 4 or mask.shape[0] not in (1, batch) or tuple(mask.shape[2:]) != (q_len, kv_len):
        raise ValueError(f"attention_mask must be [B, 1 or H, L, S] = [{batch}, ., {q_len}, {kv_len}], "
                         f"got {list(mask.shape)}")
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    allowed = allowed.expand(batch, -1, -1, -1)
    keys = torch.arange(kv_len, device=mask.device)
    last = allowed[:, 0, -1, :]  # the last query sees every key of its sequence
    starts = kv_len - last.sum(-1)
    valid = keys[None, :] >= starts[:, None]
    if not torch.equal(last, valid):
        raise ValueError("fastcot attention supports causal masks with left padding only; this mask leaves out "
                         "keys that are not a prefix (right or inner padding, packed sequences, or a window); "
                         "use attn_implementation='sdpa'")
    positions = kv_len - q_len + torch.arange(q_len, device=mask.device)  # key position of each query
    expected = valid[:, None, :] & (keys[None, None, :] <= positions[None, :, None])  # [B, L, S]
    real_query = positions[None, :] >= starts[:, None]
    bad = (allowed != expected[:, None]) & real_query[:, None, :, None]
    if bool(bad.any()):
        b, h, i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"fastcot attention supports causal masks with left padding only; mask[{b}, {h}, {i}, {j}] "
                         f"is {bool(allowed[b, h, i, j])}, causal attention says {bool(expected[b, i, j])}; "
                         "use attn_implementation='sdpa'")
    return starts


def _paged_copy(key, value, starts):
    """Each sequence's keys and values from `starts[b]` on, as fastcot's paged cache: `k_cache`,
    `v_cache` `[B * blocks, BLOCK_SIZE, Hkv, D]` (contiguous, sequence b in blocks
    `b * blocks ...`) and `block_tables [B, blocks]` int32."""
    batch, kv_heads, kv_len, head_dim = key.shape
    blocks = -(-kv_len // BLOCK_SIZE)
    index = torch.arange(blocks * BLOCK_SIZE, device=key.device)[None, :] + starts[:, None]
    index = index.clamp(max=kv_len - 1)  # the tail past each sequence's length is never read
    index = index[:, :, None, None].expand(-1, -1, kv_heads, head_dim)

    def paged(t):
        return t.transpose(1, 2).gather(1, index).reshape(batch * blocks, BLOCK_SIZE, kv_heads, head_dim)

    block_tables = torch.arange(batch * blocks, dtype=torch.int32, device=key.device).view(batch, blocks)
    return paged(key), paged(value), block_tables


def register() -> None:
    """Register "fastcot" with transformers' attention and attention-mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("fastcot", fastcot_attention_forward)
    AttentionMaskInterface.register("fastcot", sdpa_mask)
