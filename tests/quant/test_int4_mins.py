"""Int4Weight's float minimums (`mins`, GGUF Q4_1's `w = d * q + m`) on every backend, the
GPTQ export, and the helpers that pick group sizes and stack weights."""

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._int4_configs import Int4MatmulConfig
from fastcot.ops.int4_matmul import int4_matmul_triton
from fastcot.quant.importers import from_gptq, to_gptq
from fastcot.quant.int4 import fitting_group_size, stack_rows

TRITON_HERE = torch.cuda.is_available() or _backend.triton_interpreter_enabled()
BACKENDS = ["torch"] + (["triton"] if TRITON_HERE else [])


def mins_weight(n, k, group_size=32, device="cpu", dtype=torch.float16, perm=False):
    """Random q, scales and minimums, with the definition `q * d + m` computed apart in float64."""
    gs = k if group_size == -1 else group_size
    q = torch.randint(0, 16, (n, k), device=device)
    d = (torch.rand(k // gs, n, device=device) * 0.1 + 0.01).to(dtype)
    m = (torch.randn(k // gs, n, device=device) * 0.3).to(dtype)
    order = torch.randperm(k, device=device).to(torch.int32) if perm else None
    weight = fastcot.Int4Weight(
        qweight=reference.pack_int4_rows(q), scales=d, zeros=None, perm=order,
        group_size=group_size, shape=(n, k), mins=m,
    )
    group = torch.arange(k, device=device) // gs
    w_stored = q.double() * d.double().t()[:, group] + m.double().t()[:, group]
    w = torch.empty_like(w_stored)
    if perm:
        w[:, order.long()] = w_stored
    else:
        w = w_stored
    return weight, w


@pytest.mark.parametrize("perm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dequantize_is_the_definition(dtype, perm):
    weight, w = mins_weight(24, 96, 32, dtype=dtype, perm=perm)
    # 16-bit scales: q * d is exact in float32, so float32 math rounded once equals float64's rounding.
    assert torch.equal(weight.dequantize(torch.float32), w.float()) or dtype == torch.float32
    assert_close(weight.dequantize(torch.float32), w, atol=1e-6, rtol=1e-6)
    assert torch.equal(weight.dequantize(torch.float16), weight.dequantize(torch.float32).half())
    assert "mins=True" in repr(weight) and weight.nbytes == 24 * 12 * 4 + 2 * 3 * 24 * weight.scales.element_size() + (
        96 * 4 if perm else 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int4_dequantize_op_bit_exact(backend, device):
    weight, _ = mins_weight(40, 128, 32, device=device)
    for dtype in (torch.float32, torch.float16):
        out = poisoned((40, 128), dtype, device)
        with fastcot.backend(backend):
            fastcot.ops.int4_dequantize(weight, dtype, out=out)
        assert torch.equal(out, weight.dequantize(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 5])
def test_int4_matmul_with_mins(backend, m, device):
    weight, w = mins_weight(72, 192, 32, device=device, perm=m == 5)
    x = torch.randn(m, 192, device=device)
    bias = torch.randn(72, device=device)
    with fastcot.backend(backend):
        y = fastcot.ops.int4_matmul(x, weight, bias)
    expected = x.double() @ w.t() + bias.double()
    assert_close(y, expected, atol=1e-4, rtol=1e-5)


FORCED = [
    Int4MatmulConfig(1, 16, 64, split_k=2),  # GEMV, K split in two
    Int4MatmulConfig(16, 32, 64, split_k=1),  # tl.dot, a tile spanning two groups
    Int4MatmulConfig(1, 32, 32, dequant_then_matmul=True),
]


@pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("config", FORCED, ids=str)
def test_triton_code_paths_with_mins(config, device):
    dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    weight, w = mins_weight(40, 128, 32, device=device)
    m = 1 if config.block_m == 1 else 11
    x = torch.randn(m, 128, device=device).to(dtype)
    out = poisoned((m, 40), dtype, device)
    int4_matmul_triton(x, weight.qweight, weight.scales, None, None, 32, None, out, config=config, mins=weight.mins)
    expected = x.double() @ w.t()
    tol = TOLERANCE[dtype]
    assert_close(out, expected, atol=tol["atol"] * max(1.0, expected.abs().max().item()), rtol=tol["rtol"])


def test_cuda_backend_refuses_mins():
    weight, _ = mins_weight(8, 32, 32)
    x, out = torch.randn(1, 32), torch.empty(1, 8)
    with pytest.raises(_backend.BackendError, match="float-minimum"):
        torch.ops.fastcot.int4_matmul(x, weight.qweight, weight.scales, None, None, 32, None, out, "cuda", weight.mins)
    with pytest.raises(_backend.BackendError, match="float-minimum"):
        torch.ops.fastcot.int4_dequantize(weight.qweight, weight.scales, None, None, 32, torch.empty(8, 32), "cuda",
                                          weight.mins)


def test_opcheck_with_mins():
    weight, _ = mins_weight(16, 64, 32)
    x, out = torch.randn(3, 64), torch.empty(3, 16)
    torch.library.opcheck(
        torch.ops.fastcot.int4_matmul.default,
        (x, weight.qweight, weight.scales, None, None, 32, None, out, "torch", weight.mins),
    )


def test_mins_validation():
    weight, _ = mins_weight(8, 64, 32)
    fields = dict(qweight=weight.qweight, scales=weight.scales, perm=None, group_size=32, shape=(8, 64))
    with pytest.raises(ValueError, match="exclusive"):
        fastcot.Int4Weight(**fields, zeros=weight.mins, mins=weight.mins)
    with pytest.raises(ValueError, match=r"mins must have shape \[G, N\] = \[2, 8\]"):
        fastcot.Int4Weight(**fields, zeros=None, mins=weight.mins[:1])
    with pytest.raises(TypeError, match="mins must have the scales' dtype"):
        fastcot.Int4Weight(**fields, zeros=None, mins=weight.mins.float())
    with pytest.raises(TypeError, match="mins must be a torch.Tensor"):
        fastcot.Int4Weight(**fields, zeros=None, mins=[0.0])


def test_stack_rows_keeps_each_form():
    a, wa = mins_weight(8, 64, 32)
    b, wb = mins_weight(16, 64, 32)
    stacked = stack_rows([a, b])
    assert stacked.shape == (24, 64)
    assert_close(stacked.dequantize(torch.float64), torch.cat([wa, wb]), atol=1e-6, rtol=1e-6)
    plain = fastcot.quantize_int4(torch.randn(8, 64), group_size=32)
    assert stack_rows([a, plain.to("cpu")]) is None  # minimums beside zero points
    assert stack_rows([a]) is a


@pytest.mark.parametrize("k,preferred,expected", [
    (4096, 128, 128), (64, 128, 64), (96, 128, 32), (200, 128, -1), (256, 64, 64), (256, -1, -1), (96, 32, 32),
])
def test_fitting_group_size(k, preferred, expected):
    assert fitting_group_size(k, preferred) == expected


def test_fitting_group_size_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        fitting_group_size(100)
    with pytest.raises(ValueError, match=r"one of \(32, 64, 128, -1\), got 48"):
        fitting_group_size(96, 48)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [32, -1])
def test_gptq_export_round_trip(symmetric, act_order, group_size):
    n, k = 24, 128
    weight = fastcot.quantize_int4(torch.randn(n, k), group_size=group_size, symmetric=symmetric)
    if act_order:
        weight = fastcot.Int4Weight(
            qweight=weight.qweight, scales=weight.scales, zeros=weight.zeros,
            perm=torch.randperm(k).to(torch.int32), group_size=group_size, shape=(n, k),
        )
    tensors = to_gptq(weight)
    gs = k if group_size == -1 else group_size
    assert tensors["qweight"].shape == (k // 8, n) and tensors["qzeros"].shape == (k // gs, n // 8)
    back = from_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"],
                     group_size=group_size, sym=symmetric, checkpoint_format="gptq_v2")
    assert torch.equal(back.dequantize(torch.float32), weight.dequantize(torch.float32))


def test_gptq_export_refuses_what_gptq_cannot_hold():
    weight, _ = mins_weight(8, 64, 32)
    with pytest.raises(ValueError, match="no float minimums"):
        to_gptq(weight)
    with pytest.raises(ValueError, match="multiple of 8, got N=12"):
        to_gptq(fastcot.quantize_int4(torch.randn(12, 64), group_size=32))
    w = fastcot.quantize_int4(torch.randn(8, 64), group_size=32)
    shifted = fastcot.Int4Weight(qweight=w.qweight, scales=w.scales, zeros=w.zeros + 0.5, perm=None,
                                 group_size=32, shape=(8, 64))
    with pytest.raises(ValueError, match="integers 0..15"):
        to_gptq(shifted)
