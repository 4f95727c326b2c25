"""The "fastcot" transformers attention function against transformers' own sdpa one."""

import pytest
import torch
from helpers import assert_close

import fastcot.integrations.transformers  # noqa: F401  (registers "fastcot")
from fastcot.integrations.transformers_attention import fastcot_attention_forward


class Module(torch.nn.Module):
    """The attributes transformers' attention functions read from the attention module."""

    def __init__(self, q_heads, kv_heads):
        super().__init__()
        self.num_key_value_groups = q_heads // kv_heads
        self.is_causal = True


def causal_mask(batch, q_len, kv_len, pads):
    """transformers' boolean mask for causal attention with left padding `pads[b]`."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    padding = torch.arange(kv_len)[None, :] >= torch.tensor(pads)[:, None]
    return sdpa_mask(batch_size=batch, q_length=q_len, kv_length=kv_len, q_offset=kv_len - q_len, kv_offset=0,
                     mask_function=causal_mask_function, attention_mask=padding, allow_is_causal_skip=False)


CASES = [  # (q_heads, kv_heads, head_dim, q_len, kv_len, left padding of each sequence)
    (4, 2, 16, 13, 13, [0, 0]),  # prefill
    (4, 2, 16, 11, 11, [0, 4]),  # prefill, left padding
    (6, 2, 32, 5, 21, [0, 2, 7]),  # chunk of new tokens after cached ones
    (4, 4, 16, 1, 37, [0, 5]),  # decode, multi-head
    (8, 2, 16, 1, 17, [3]),  # decode, GQA 4
]


@pytest.mark.parametrize("q_heads,kv_heads,head_dim,q_len,kv_len,pads", CASES)
def test_matches_sdpa(q_heads, kv_heads, head_dim, q_len, kv_len, pads):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch = len(pads)
    module = Module(q_heads, kv_heads)
    q = torch.randn(batch, q_heads, q_len, head_dim)
    k = torch.randn(batch, kv_heads, kv_len, head_dim)
    v = torch.randn(batch, kv_heads, kv_len, head_dim)
    mask = causal_mask(batch, q_len, kv_len, pads)
    got, _ = fastcot_attention_forward(module, q, k, v, mask, scaling=head_dim ** -0.5)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=head_dim ** -0.5)
    assert got.shape == want.shape == (batch, q_len, q_heads, head_dim)
    positions = kv_len - q_len + torch.arange(q_len)
    real = positions[None, :] >= torch.tensor(pads)[:, None]  # padding query rows are zeros here
    assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))
    if not any(pads) and (q_len == 1 or q_len == kv_len):  # transformers skips the mask: same result
        again, _ = fastcot_attention_forward(module, q, k, v, None, scaling=head_dim ** -0.5)
        assert_close(again, got, atol=1e-6, rtol=1e-6)


def test_float_mask_and_default_scale():
    module = Module(2, 2)
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = causal_mask(1, 6, 6, [2])
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    a, _ = fastcot_attention_forward(module, q, k, v, mask)
    b, _ = fastcot_attention_forward(module, q, k, v, additive, scaling=8 ** -0.5)
    assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_refuses_what_the_kernels_cannot_express():
    module = Module(2, 2)
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    right_padded = causal_mask(2, 4, 4, [0, 0])
    right_padded[1, :, :, 3] = False
    with pytest.raises(ValueError, match="left padding only"):
        fastcot_attention_forward(module, q, k, v, right_padded)
    windowed = causal_mask(2, 4, 4, [0, 0])
    windowed[:, :, 3, 0] = False
    with pytest.raises(ValueError, match=r"mask\[0, 0, 1, 0\] is True, causal attention says False"):
        fastcot_attention_forward(module, q, k, v, windowed)
    with pytest.raises(ValueError, match="causal alignment is ambiguous"):
        fastcot_attention_forward(module, q[:, :, :2], k, v, None)
    with pytest.raises(ValueError, match="sliding_window=3"):
        fastcot_attention_forward(module, q, k, v, None, sliding_window=3)
    with pytest.raises(ValueError, match="softcap"):
        fastcot_attention_forward(module, q, k, v, None, softcap=30.0)
    with pytest.raises(ValueError, match="causal only"):
        fastcot_attention_forward(module, q, k, v, None, is_causal=False)
    with pytest.raises(ValueError, match="inference"):
        fastcot_attention_forward(module, q.requires_grad_(), k, v, None)


def test_registered_with_transformers():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert AttentionInterface._global_mapping["fastcot"] is fastcot_attention_forward
    assert "fastcot" in AttentionMaskInterface._global_mapping  # else transformers passes no mask
