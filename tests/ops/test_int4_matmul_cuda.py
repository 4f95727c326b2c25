"""The csrc int4 GEMV behind `fastcot.ops.int4_matmul` (backend "cuda"): its refusals, which
need no GPU, and on a GPU its results against the float64 reference and the Triton kernel."""

import pytest
import torch
from helpers import TOLERANCE, assert_close, max_abs_error, poisoned

import fastcot
from fastcot.kernels import cuda, reference
from fastcot.ops import _backend
from fastcot.quant.int4 import Int4Weight

LLAMA_8B = [(4096, 4096), (6144, 4096), (14336, 4096), (4096, 14336)]
needs_cuda_backend = pytest.mark.skipif(
    not torch.cuda.is_available() or not cuda.available(),
    reason=f"needs a CUDA device and fastcot._C: {cuda.unavailable_reason() or 'torch sees no CUDA device'}",
)


# ---------------------------------------------------------------- everywhere


@pytest.mark.parametrize("op", sorted(_backend.AUTO_ON_CUDA))
def test_auto_never_picks_the_unmeasured_cuda_kernels(op, monkeypatch):
    monkeypatch.delenv("FASTCOT_BACKEND", raising=False)
    assert _backend.resolve(op, torch.device("cuda")) != "cuda"
    assert _backend.resolve(op, torch.device("cpu")) == "torch"


def test_cuda_is_registered_for_the_decode_ops():
    assert "cuda" in _backend.IMPLEMENTATIONS["int4_matmul"]
    assert "cuda" in _backend.IMPLEMENTATIONS["paged_decode_attention"]


@pytest.mark.parametrize("m", [17, 64, 4096])
def test_more_than_16_rows_is_refused_naming_the_triton_backend(m):
    with pytest.raises(ValueError, match=rf"x: .*at most 16 rows, got M={m}.*triton"):
        cuda.check_int4_gemv(torch.empty(m, 64), torch.empty(m, 8))


def test_decode_sizes_pass_the_check():
    for m in (1, 7, 16):
        cuda.check_int4_gemv(torch.empty(m, 64), torch.empty(m, 8))


def test_out_with_a_strided_last_dim_is_refused():
    with pytest.raises(ValueError, match="out: expected"):
        cuda.check_int4_gemv(torch.empty(2, 64), torch.empty(8, 2).t())


def test_cuda_backend_on_cpu_tensors_names_the_backend():
    weight = fastcot.quantize_int4(torch.randn(16, 64), group_size=32)
    with fastcot.backend("cuda"), pytest.raises(_backend.BackendError, match="cuda"):
        fastcot.ops.int4_matmul(torch.randn(1, 64), weight)


def test_launcher_names_the_backend_when_unavailable():
    if cuda.available():
        pytest.skip("the cuda backend is available here")
    with pytest.raises(RuntimeError, match="cuda backend cannot run int4_gemv"):
        cuda.int4_gemv(torch.zeros(1, 64), torch.zeros(8, 8, dtype=torch.int32), torch.ones(2, 8), None, None, 32,
                       torch.empty(1, 8))


# ---------------------------------------------------------------- on a GPU


def expected(x, w, bias=None):
    return reference.int4_matmul(
        x.double(), w.qweight, w.scales, w.zeros, w.perm, w.group_size, bias, compute_dtype=torch.float64
    )


def run(x, w, bias=None, backend="cuda"):
    out = poisoned((*x.shape[:-1], w.shape[0]), x.dtype, x.device)
    with fastcot.backend(backend):
        result = fastcot.ops.int4_matmul(x, w, bias, out=out)
    assert result is out
    return out


def check(out, x, w, bias=None):
    """Within the dtype's tolerance of float64, and no worse than twice torch's own error
    computing the same product in x's dtype (DESIGN.md §4)."""
    ref = expected(x, w, bias)
    scale = max(1.0, ref.abs().max().item())
    tol = TOLERANCE[x.dtype]
    assert_close(out, ref, atol=tol["atol"] * scale, rtol=tol["rtol"])
    if x.dtype != torch.float32:
        same_dtype = x @ w.dequantize(x.dtype).t()
        if bias is not None:
            same_dtype = same_dtype + bias.to(x.dtype)
        assert max_abs_error(out, ref) <= 2 * max_abs_error(same_dtype, ref) + 1e-6 * scale


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", LLAMA_8B)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13, 16])
def test_llama_shapes_against_reference_and_triton(dtype, n, k, m):
    w = fastcot.quantize_int4(torch.randn(n, k, device="cuda", dtype=dtype) * 0.02, group_size=128)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    out = run(x, w)
    check(out, x, w)
    triton_out = run(x, w, backend="triton")
    tol = TOLERANCE[dtype]
    scale = max(1.0, triton_out.abs().max().item())
    assert_close(out, triton_out, atol=2 * tol["atol"] * scale, rtol=2 * tol["rtol"])


ODD = [  # (N, K, group_size): 16-byte and 4-byte weight loads, N not a multiple of the 4-row tile
    (1, 4096, 128),
    (37, 96, 32),
    (72, 192, 64),
    (40, 136, -1),   # K % 32 != 0: one word per lane
    (203, 512, -1),
    (6, 8, -1),      # one word per row
]


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,k,group_size", ODD)
@pytest.mark.parametrize("symmetric", [False, True], ids=["zeros", "sym"])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_odd_shapes(dtype, n, k, group_size, symmetric, m):
    scale_dtype = torch.float16 if dtype == torch.float32 else dtype
    w = fastcot.quantize_int4(torch.randn(n, k, device="cuda").to(scale_dtype), group_size=group_size,
                              symmetric=symmetric)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    check(run(x, w), x, w)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("bias_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_bias_of_any_float_dtype_and_leading_dims(bias_dtype):
    w = fastcot.quantize_int4(torch.randn(96, 256, device="cuda", dtype=torch.float16), group_size=64)
    x = torch.randn(2, 3, 256, device="cuda", dtype=torch.float16)
    bias = torch.randn(96, device="cuda", dtype=bias_dtype)
    check(run(x, w, bias), x, w, bias)


@pytest.mark.gpu
@needs_cuda_backend
def test_act_order_weight_gathers_the_activations():
    base = fastcot.quantize_int4(torch.randn(64, 256, device="cuda", dtype=torch.float16), group_size=32)
    perm = torch.randperm(256, device="cuda").to(torch.int32)
    w = Int4Weight(base.qweight, base.scales, base.zeros, perm, base.group_size, base.shape)
    x = torch.randn(4, 256, device="cuda", dtype=torch.float16)
    check(run(x, w), x, w)


@pytest.mark.gpu
@needs_cuda_backend
def test_misaligned_and_strided_activations():
    w = fastcot.quantize_int4(torch.randn(128, 512, device="cuda", dtype=torch.bfloat16), group_size=128)
    wide = torch.randn(3, 520, device="cuda", dtype=torch.bfloat16)
    for x in (wide[:, 1:513], wide[:, 8:520], torch.randn(1, 513, device="cuda", dtype=torch.bfloat16)[:, 1:]):
        check(run(x, w), x, w)


@pytest.mark.gpu
@needs_cuda_backend
def test_more_than_16_rows_raises_on_the_gpu_too():
    w = fastcot.quantize_int4(torch.randn(64, 128, device="cuda", dtype=torch.float16), group_size=64)
    with fastcot.backend("cuda"), pytest.raises(ValueError, match="at most 16 rows"):
        fastcot.ops.int4_matmul(torch.randn(17, 128, device="cuda", dtype=torch.float16), w)


@pytest.mark.gpu
@needs_cuda_backend
def test_binding_refuses_m_above_16_before_launch():
    ext = cuda.extension()
    x = torch.zeros(17, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="M <= 16"):
        ext.int4_gemv(x=x.data_ptr(), qweight=x.data_ptr(), scales=x.data_ptr(), zeros=0, bias=0,
                      out=x.data_ptr(), m=17, n=8, k=64, group_size=32, stride_xm=64, stride_om=8,
                      x_dtype=ext.DTYPE_FLOAT16, scale_dtype=ext.DTYPE_FLOAT16, bias_dtype=ext.DTYPE_FLOAT16,
                      device=0, stream=0)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("m", [1, 16])
def test_cuda_graph_capture_on_a_side_stream_and_replay(m):
    w = fastcot.quantize_int4(torch.randn(4096, 4096, device="cuda", dtype=torch.float16) * 0.02, group_size=128)
    bias = torch.randn(4096, device="cuda", dtype=torch.float16)
    x = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
    out = torch.empty(m, 4096, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), fastcot.backend("cuda"):
        fastcot.ops.int4_matmul(x, w, bias, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), fastcot.backend("cuda"):
        fastcot.ops.int4_matmul(x, w, bias, out=out)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check(out, x, w, bias)
