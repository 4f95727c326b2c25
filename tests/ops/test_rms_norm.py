"""`rms_norm`, with and without the fused residual add, against the float64 reference on every backend here."""

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops.norm import rms_norm

ON_GPU = torch.cuda.is_available()
TRITON_HERE = ON_GPU or _backend.triton_interpreter_enabled()
BACKENDS = ["torch"] + (["triton"] if TRITON_HERE else [])
# The interpreter has no bf16 arithmetic; bf16 is covered on the GPU.
DTYPES = [torch.float16, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]


def expected(x, weight, eps, residual=None):
    """float64 reference: (out, updated residual or None)."""
    return reference.rms_norm(x, weight, eps, residual, compute_dtype=torch.float64)


def check(actual, ref):
    tol = TOLERANCE[actual.dtype]
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    assert_close(actual, ref, atol=tol["atol"] * scale, rtol=tol["rtol"])


def make_inputs(t, h, dtype, device):
    x = torch.randn(t, h, device=device).to(dtype)
    weight = (1.0 + 0.5 * torch.randn(h, device=device)).to(dtype)
    residual = (4 * torch.randn(t, h, device=device)).to(dtype)
    return x, weight, residual


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h", [96, 200, 4100])
@pytest.mark.parametrize("t", [1, 3, 17, 0])
def test_matches_reference(backend, dtype, h, t, device):
    x, weight, _ = make_inputs(t, h, dtype, device)
    x_before = x.clone()
    out = poisoned((t, h), dtype, device)
    with fastcot.backend(backend):
        result = rms_norm(x, weight, 1e-6, out=out)
    assert result is out
    check(out, expected(x, weight, 1e-6)[0])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h", [96, 200, 4100])
@pytest.mark.parametrize("t", [1, 3, 17, 0])
def test_fused_residual_add(backend, dtype, h, t, device):
    """`residual` becomes `x + residual` in place (rounded to x's dtype); the output normalizes
    that updated stream; x is left alone."""
    x, weight, residual = make_inputs(t, h, dtype, device)
    x_before, residual_before = x.clone(), residual.clone()
    out = poisoned((t, h), dtype, device)
    with fastcot.backend(backend):
        result = rms_norm(x, weight, 1e-5, residual=residual, out=out)
    ref_out, ref_residual = expected(x_before, weight, 1e-5, residual_before)
    assert result is out
    assert torch.equal(x, x_before)
    assert ref_residual.dtype == dtype
    # The stream is x + residual added in x's dtype, exactly as torch (and HF) add.
    assert torch.equal(residual, ref_residual)
    check(out, ref_out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_strides(backend, device):
    dtype = DTYPES[-1]
    big = torch.randn(2, 3, 300, device=device).to(dtype)
    x = big[..., 50:250]  # rows of 200 inside rows of 300: a row stride the kernel must honour
    weight = torch.randn(200, device=device).to(dtype)
    with fastcot.backend(backend):
        y = rms_norm(x, weight)
    assert y.shape == (2, 3, 200) and y.dtype == dtype
    check(y, expected(x, weight, 1e-6)[0])
    column = torch.randn(200, 5, device=device).to(dtype).t()  # last dim not contiguous
    with fastcot.backend(backend):
        y_c = rms_norm(column, weight)
    check(y_c, expected(column, weight, 1e-6)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("layout", ["strided", "broadcast"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_weight_in_any_layout(backend, t, layout, with_residual, device):
    """A weight view whose elements are not adjacent is read as the values it shows (a strided
    weight once reached the kernel as is: T=1, H=8 was 0.33 off)."""
    dtype = DTYPES[-1]
    x, _, residual = make_inputs(t, 8, dtype, device)
    full = torch.randn(16, device=device).to(dtype)
    weight = full[::2] if layout == "strided" else full[:1].expand(8)
    residual = residual if with_residual else None
    residual_before = None if residual is None else residual.clone()
    with fastcot.backend(backend):
        y = rms_norm(x, weight, residual=residual)
    ref_out, ref_residual = expected(x, weight, 1e-6, residual_before)
    check(y, ref_out)
    if with_residual:
        check(residual, ref_residual)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_give_zeros_and_eps_matters(backend, device):
    x = torch.zeros(2, 96, device=device)
    x[1] = 1e-4
    weight = torch.ones(96, device=device)
    with fastcot.backend(backend):
        y = rms_norm(x, weight, eps=1e-6)
    assert torch.equal(y[0], torch.zeros(96, device=device))
    check(y, expected(x, weight, 1e-6)[0])  # 1e-4 / sqrt(1e-8 + 1e-6), not 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_fp16_values(backend, device):
    """Squares of fp16 values near 6e4 overflow fp16 but not the float32 accumulation."""
    x = (torch.rand(3, 200, device=device) * 6e4).to(torch.float16)
    weight = torch.randn(200, device=device).to(torch.float16)
    with fastcot.backend(backend):
        y = rms_norm(x, weight)
    assert torch.isfinite(y).all()
    check(y, expected(x, weight, 1e-6)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree(backend, device):
    """Every backend gives the torch backend's result (HF's numerics) up to float32 arithmetic."""
    x, weight, residual = make_inputs(17, 200, DTYPES[-1], device)
    r_torch, r_backend = residual.clone(), residual.clone()
    with fastcot.backend("torch"):
        y_torch = rms_norm(x, weight, residual=r_torch)
    with fastcot.backend(backend):
        y = rms_norm(x, weight, residual=r_backend)
    assert torch.equal(r_backend, r_torch)
    check(y, y_torch.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_weight_with_fp16_activations(backend, device):
    x, _, residual = make_inputs(3, 200, torch.float16, device)
    weight = 1.0 + 0.5 * torch.randn(200, device=device)
    with fastcot.backend(backend):
        y = rms_norm(x, weight, residual=residual.clone())
    assert y.dtype == torch.float16
    check(y, expected(x, weight, 1e-6, residual)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    dtype = DTYPES[-1]
    x, weight, residual = make_inputs(3, 96, dtype, device)
    out = torch.empty_like(x)
    torch.library.opcheck(torch.ops.fastcot.rms_norm.default, (x, weight, out, 1e-6, backend))
    torch.library.opcheck(torch.ops.fastcot.fused_add_rms_norm.default, (x, residual, weight, out, 1e-6, backend))


def test_compiles_without_graph_breaks():
    x, weight, residual = make_inputs(3, 96, torch.float32, torch.device("cpu"))
    r_eager, r_compiled = residual.clone(), residual.clone()
    expected_out = rms_norm(x, weight, residual=r_eager) * 2
    compiled = torch.compile(lambda a, r: rms_norm(a, weight, residual=r) * 2, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, r_compiled), expected_out, atol=1e-6, rtol=1e-6)
    assert torch.equal(r_compiled, r_eager)


class TestBadInput:
    x = torch.randn(2, 64)
    weight = torch.randn(64)

    def test_x(self):
        with pytest.raises(TypeError, match="x must be float16"):
            rms_norm(torch.ones(2, 64, dtype=torch.int32), self.weight)
        with pytest.raises(ValueError, match=r"x must have shape \[..., H\]"):
            rms_norm(torch.randn(2, 0), torch.randn(0))
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            rms_norm([1.0, 2.0], self.weight)

    def test_weight(self):
        with pytest.raises(ValueError, match=r"weight must have shape \[H\] = \[64\], got \[63\]"):
            rms_norm(self.x, torch.randn(63))
        with pytest.raises(TypeError, match="weight must be a float tensor"):
            rms_norm(self.x, torch.ones(64, dtype=torch.int64))
        with pytest.raises(ValueError, match="weight is on meta"):
            rms_norm(self.x, torch.randn(64, device="meta"))

    def test_eps(self):
        with pytest.raises(ValueError, match="eps must be a non-negative number"):
            rms_norm(self.x, self.weight, -1e-6)
        with pytest.raises(ValueError, match="eps"):
            rms_norm(self.x, self.weight, "1e-6")

    def test_residual(self):
        with pytest.raises(ValueError, match=r"residual must have x's shape \[2, 64\]"):
            rms_norm(self.x, self.weight, residual=torch.randn(2, 63))
        with pytest.raises(TypeError, match="residual must have x's dtype"):
            rms_norm(self.x, self.weight, residual=torch.randn(2, 64, dtype=torch.float16))
        with pytest.raises(ValueError, match="residual is on meta"):
            rms_norm(self.x, self.weight, residual=torch.randn(2, 64, device="meta"))
        with pytest.raises(ValueError, match="residual must be contiguous"):
            rms_norm(self.x, self.weight, residual=torch.randn(64, 2).t())
        with pytest.raises(ValueError, match="residual must not share memory with x"):
            rms_norm(self.x, self.weight, residual=self.x)

    def test_out(self):
        with pytest.raises(ValueError, match="out must have x's shape"):
            rms_norm(self.x, self.weight, out=torch.empty(2, 65))
        with pytest.raises(TypeError, match="out must have x's dtype"):
            rms_norm(self.x, self.weight, out=torch.empty(2, 64, dtype=torch.float16))
        with pytest.raises(ValueError, match="out must be contiguous"):
            rms_norm(self.x, self.weight, out=torch.empty(64, 2).t())
        with pytest.raises(ValueError, match="out must not share memory with x"):
            rms_norm(self.x, self.weight, out=self.x)
        residual = torch.randn(2, 64)
        with pytest.raises(ValueError, match="out must not share memory with residual"):
            rms_norm(self.x, self.weight, residual=residual, out=residual)

    @pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")
    def test_row_too_wide_for_triton(self, device):
        x = torch.randn(1, 65537, device=device)
        with fastcot.backend("triton"), pytest.raises(_backend.BackendError, match="hidden size 65537"):
            rms_norm(x, torch.ones(65537, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h", [2048, 4096, 8192, 14336])
@pytest.mark.parametrize("t", [1, 64, 4096])
def test_gpu_real_sizes(dtype, h, t):
    x, weight, residual = make_inputs(t, h, dtype, torch.device("cuda"))
    ref_out, ref_residual = expected(x, weight, 1e-5, residual)
    out = poisoned((t, h), dtype, "cuda")
    with fastcot.backend("triton"):
        rms_norm(x, weight, 1e-5, residual=residual, out=out)
    assert torch.equal(residual, ref_residual)
    check(out, ref_out)
    compiled = torch.compile(lambda a: rms_norm(a, weight, 1e-5), fullgraph=True)
    check(compiled(x), expected(x, weight, 1e-5)[0])
