"""`silu_and_mul` against the float64 reference, on every backend that runs here."""

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops.activation import silu_and_mul

ON_GPU = torch.cuda.is_available()
TRITON_HERE = ON_GPU or _backend.triton_interpreter_enabled()
BACKENDS = ["torch"] + (["triton"] if TRITON_HERE else [])
# The interpreter has no bf16 arithmetic; bf16 is covered on the GPU.
DTYPES = [torch.float16, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]


def check(actual, x):
    ref = reference.silu_and_mul(x, compute_dtype=torch.float64)
    tol = TOLERANCE[actual.dtype]
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    assert_close(actual, ref, atol=tol["atol"] * scale, rtol=tol["rtol"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("i", [96, 200, 4100])
@pytest.mark.parametrize("t", [1, 3, 17, 0])
def test_matches_reference(backend, dtype, i, t, device):
    x = (3 * torch.randn(t, 2 * i, device=device)).to(dtype)
    x_before = x.clone()
    out = poisoned((t, i), dtype, device)
    with fastcot.backend(backend):
        result = silu_and_mul(x, out=out)
    assert result is out
    check(out, x)
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_comes_first(backend, device):
    """silu of the first half times the second half: swapping the halves changes the result."""
    gate = torch.tensor([[2.0, -1.0, 0.0]], device=device)
    up = torch.tensor([[3.0, 5.0, 7.0]], device=device)
    with fastcot.backend(backend):
        y = silu_and_mul(torch.cat([gate, up], dim=-1))
    assert_close(y, torch.nn.functional.silu(gate.double()) * up.double(), atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_gates(backend, device):
    """exp(-gate) overflows for very negative gates; the result must be the limit (0), not NaN."""
    gate = torch.tensor([[-1e4, -100.0, -88.8, -20.0, 0.0, 20.0, 100.0, 1e4]], device=device)
    x = torch.cat([gate, torch.full_like(gate, 2.0)], dim=-1)
    with fastcot.backend(backend):
        y = silu_and_mul(x)
    assert torch.isfinite(y).all()
    check(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_strides(backend, device):
    dtype = DTYPES[-1]
    big = torch.randn(2, 3, 500, device=device).to(dtype)
    x = big[..., 50:450]  # rows of 2*200 inside rows of 500
    with fastcot.backend(backend):
        y = silu_and_mul(x)
    assert y.shape == (2, 3, 200) and y.dtype == dtype
    check(y, x)
    column = torch.randn(400, 5, device=device).to(dtype).t()  # last dim not contiguous
    with fastcot.backend(backend):
        check(silu_and_mul(column), column)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    x = torch.randn(3, 2 * 96, device=device).to(DTYPES[-1])
    out = torch.empty(3, 96, device=device, dtype=x.dtype)
    torch.library.opcheck(torch.ops.fastcot.silu_and_mul.default, (x, out, backend))


def test_compiles_without_graph_breaks():
    x = torch.randn(3, 2 * 96)
    expected = silu_and_mul(x) + 1
    compiled = torch.compile(lambda a: silu_and_mul(a) + 1, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x), expected, atol=1e-6, rtol=1e-6)


class TestBadInput:
    x = torch.randn(2, 64)

    def test_x(self):
        with pytest.raises(ValueError, match=r"x must have shape \[..., 2\*I\] \(an even last dim\), got \[2, 63\]"):
            silu_and_mul(torch.randn(2, 63))
        with pytest.raises(ValueError, match="x must have shape"):
            silu_and_mul(torch.tensor(1.0))
        with pytest.raises(TypeError, match="x must be float16, bfloat16 or float32, got torch.int32"):
            silu_and_mul(torch.ones(2, 64, dtype=torch.int32))
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            silu_and_mul([1.0, 2.0])

    def test_out(self):
        with pytest.raises(ValueError, match=r"out must have shape \[2, 32\], got \[2, 64\]"):
            silu_and_mul(self.x, out=torch.empty(2, 64))
        with pytest.raises(TypeError, match="out must have x's dtype"):
            silu_and_mul(self.x, out=torch.empty(2, 32, dtype=torch.float16))
        with pytest.raises(ValueError, match="out is on meta"):
            silu_and_mul(self.x, out=torch.empty(2, 32, device="meta"))
        with pytest.raises(ValueError, match="out must be contiguous"):
            silu_and_mul(self.x, out=torch.empty(32, 2).t())
        with pytest.raises(ValueError, match="out must not share memory with x"):
            silu_and_mul(self.x, out=self.x.view(-1)[:64].view(2, 32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("i", [8192, 14336, 28672])
@pytest.mark.parametrize("t", [1, 64, 4096])
def test_gpu_real_sizes(dtype, i, t):
    x = (3 * torch.randn(t, 2 * i, device="cuda")).to(dtype)
    out = poisoned((t, i), dtype, "cuda")
    with fastcot.backend("triton"):
        silu_and_mul(x, out=out)
    check(out, x)
    compiled = torch.compile(lambda a: silu_and_mul(a), fullgraph=True)
    check(compiled(x), x)
