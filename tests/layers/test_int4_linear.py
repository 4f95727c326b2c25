"""`fastcot.Int4Linear` as a drop-in replacement for `nn.Linear`."""

import pytest
import torch
from helpers import assert_close
from torch import nn

import fastcot
from fastcot.kernels import reference


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_from_linear_matches_dequantized_linear(bias, group_size):
    linear = nn.Linear(256, 72, bias=bias)
    layer = fastcot.Int4Linear.from_linear(linear, group_size=group_size)
    x = torch.randn(2, 5, 256)
    y = layer(x)
    w = layer.weight
    expected = reference.int4_matmul(
        x.double(), w.qweight, w.scales, w.zeros, w.perm, w.group_size,
        None if linear.bias is None else linear.bias.detach(), compute_dtype=torch.float64,
    )
    assert y.shape == (2, 5, 72)
    assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # Quantization error against the float layer: reported bound, not kernel error.
    rel = (y - linear(x)).norm() / linear(x).norm()
    assert rel < 0.15, f"int4 relative error {rel:.3f}"


def test_state_dict_round_trip_and_dtype_moves():
    layer = fastcot.Int4Linear.from_linear(nn.Linear(128, 40), group_size=64)
    clone = fastcot.Int4Linear(fastcot.quantize_int4(torch.randn(40, 128), group_size=64), torch.zeros(40))
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(3, 128)
    assert torch.equal(clone(x), layer(x))
    half = layer.to(torch.float16)
    assert half.scales.dtype == torch.float16 and half.qweight.dtype == torch.int32
    assert half.weight.scales is half.scales
    assert half(x.half()).dtype == torch.float16
    assert "group_size=64" in repr(layer)


def test_rejects_non_linear():
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        fastcot.Int4Linear.from_linear(nn.Conv1d(4, 4, 1))
    with pytest.raises(TypeError, match="Int4Weight"):
        fastcot.Int4Linear(torch.randn(4, 8))
