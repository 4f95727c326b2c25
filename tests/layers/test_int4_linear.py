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


@pytest.mark.parametrize("k,group_size,expected", [(64, 128, 64), (96, 128, 32), (200, 128, -1), (256, 64, 64)])
def test_from_linear_picks_a_group_size_that_divides_k(k, group_size, expected):
    layer = fastcot.Int4Linear.from_linear(nn.Linear(k, 16), group_size=group_size)
    assert layer.group_size == expected == layer.weight.group_size
    x = torch.randn(3, k)
    assert_close(layer(x), x @ layer.weight.dequantize(torch.float32).t() + layer.bias, atol=1e-5, rtol=1e-5)


def test_from_linear_errors_name_the_choices():
    with pytest.raises(ValueError, match="multiple of 8, got K=100"):
        fastcot.Int4Linear.from_linear(nn.Linear(100, 16))
    with pytest.raises(ValueError, match=r"one of \(32, 64, 128, -1\)"):
        fastcot.Int4Linear.from_linear(nn.Linear(64, 16), group_size=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_reaches_the_input_through_the_dequantized_weight(dtype):
    layer = fastcot.Int4Linear.from_linear(nn.Linear(128, 40), group_size=32)
    x = torch.randn(2, 3, 128, dtype=torch.float32, requires_grad=True)
    grad_out = torch.randn(2, 3, 40)
    layer(x).backward(grad_out)
    expected = grad_out.double() @ layer.weight.dequantize(torch.float64)
    assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)
    assert all(not t.requires_grad for t in layer.buffers())
    # Without grad the output is the same tensor math, and no graph is kept.
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x.detach()))


def test_adapter_over_int4_base_trains():
    base = fastcot.Int4Linear.from_linear(nn.Linear(64, 64), group_size=32)
    adapter = nn.Linear(64, 64)
    x = torch.randn(8, 64, requires_grad=True)
    loss = (base(adapter(x)) ** 2).sum()
    loss.backward()
    w = base.weight.dequantize(torch.float32)
    h = adapter(x).detach()
    expected = (2 * (h @ w.t() + base.bias)) @ w  # d loss / d h
    assert_close(adapter.bias.grad, expected.sum(0), atol=1e-3, rtol=1e-4)


def test_state_dict_is_gptq_v2():
    layer = fastcot.Int4Linear.from_linear(nn.Linear(96, 40), group_size=32)
    state = layer.state_dict()
    assert sorted(state) == ["bias", "g_idx", "qweight", "qzeros", "scales"]
    assert state["qweight"].shape == (12, 40) and state["qzeros"].shape == (3, 5)
    shell = fastcot.Int4Linear(fastcot.quantize_int4(torch.zeros(40, 96), group_size=32), torch.zeros(40))
    shell.load_state_dict(state)
    assert torch.equal(shell.weight.dequantize(torch.float32), layer.weight.dequantize(torch.float32))
    with pytest.raises(RuntimeError, match="Missing key.*qzeros"):
        shell.load_state_dict({k: v for k, v in state.items() if k != "qzeros"})
    with pytest.raises(RuntimeError, match="Unexpected key.*extra"):
        shell.load_state_dict({**state, "extra": torch.zeros(1)})
    other_groups = fastcot.Int4Linear(fastcot.quantize_int4(torch.zeros(40, 96), group_size=-1), torch.zeros(40))
    with pytest.raises(RuntimeError, match="qzeros must have shape"):
        other_groups.load_state_dict(state)
