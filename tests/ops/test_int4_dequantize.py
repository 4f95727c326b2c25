"""`fastcot.ops.int4_dequantize`: every backend that can run here equals the reference bit for bit."""

import pytest
import torch
from helpers import poisoned

import fastcot
from fastcot.kernels import cuda, reference
from fastcot.ops import _backend

ON_GPU = torch.cuda.is_available()
BACKENDS = ["torch"]
if ON_GPU or _backend.triton_interpreter_enabled():
    BACKENDS.append("triton")
if ON_GPU and cuda.available():
    BACKENDS.append("cuda")
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if ON_GPU else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,group_size", [(37, 192, 64), (13, 96, 32), (40, 384, 128), (9, 136, -1)])
@pytest.mark.parametrize("symmetric,act_order", [(False, False), (True, True)])
def test_matches_reference_exactly(backend, dtype, n, k, group_size, symmetric, act_order, device):
    w = fastcot.quantize_int4(torch.randn(n, k, device=device), group_size=group_size, symmetric=symmetric)
    if act_order:
        w = fastcot.Int4Weight(qweight=w.qweight, scales=w.scales, zeros=w.zeros,
                               perm=torch.randperm(k, device=device).to(torch.int32),
                               group_size=group_size, shape=(n, k))
    out = poisoned((n, k), dtype, device)
    with fastcot.backend(backend):
        got = fastcot.ops.int4_dequantize(w, dtype, out=out)
    assert got is out
    expected = reference.int4_dequantize(w.qweight, w.scales, w.zeros, w.perm, group_size, dtype)
    assert torch.equal(out, expected), f"max diff {(out.double() - expected.double()).abs().max()}"


def test_default_dtype_is_the_scales_dtype():
    w = fastcot.quantize_int4(torch.randn(16, 64).half(), group_size=32)
    assert fastcot.ops.int4_dequantize(w).dtype == torch.float16


def test_bad_input():
    w = fastcot.quantize_int4(torch.randn(16, 64), group_size=32)
    with pytest.raises(TypeError, match="dtype must be float16"):
        fastcot.ops.int4_dequantize(w, torch.float64)
    with pytest.raises(ValueError, match=r"out must have shape \[N, K\] = \[16, 64\]"):
        fastcot.ops.int4_dequantize(w, out=torch.empty(16, 63))
    with pytest.raises(TypeError, match="out must have dtype"):
        fastcot.ops.int4_dequantize(w, torch.float16, out=torch.empty(16, 64))
    with pytest.raises(ValueError, match="contiguous"):
        fastcot.ops.int4_dequantize(w, out=torch.empty(64, 16).t())
    with pytest.raises(TypeError, match="Int4Weight"):
        fastcot.ops.int4_dequantize(torch.randn(16, 64))
    with fastcot.backend("cuda"), pytest.raises(_backend.BackendError, match="cuda"):
        fastcot.ops.int4_dequantize(w)
