"""GPU-only checks of `int4_matmul`: real Llama shapes, CUDA-graph capture and replay, torch.compile."""

import pytest
import torch
from helpers import TOLERANCE, assert_close

import fastcot
from fastcot.kernels import reference

pytestmark = pytest.mark.gpu

LLAMA_8B = [(4096, 4096), (6144, 4096), (14336, 4096), (4096, 14336)]


def expected(x, w, bias=None):
    return reference.int4_matmul(
        x.double(), w.qweight, w.scales, w.zeros, w.perm, w.group_size, bias, compute_dtype=torch.float64
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", LLAMA_8B)
@pytest.mark.parametrize("m", [1, 7, 16, 64, 1024])
def test_real_shapes(dtype, n, k, m):
    w = fastcot.quantize_int4(torch.randn(n, k, device="cuda", dtype=dtype) * 0.02, group_size=128)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
    with fastcot.backend("triton"):
        fastcot.ops.int4_matmul(x, w, out=out)
    ref = expected(x, w)
    tol = TOLERANCE[dtype]
    assert_close(out, ref, atol=tol["atol"] * max(1.0, ref.abs().max().item()), rtol=tol["rtol"])
    torch_err = (x @ w.dequantize(dtype).t() - ref).abs().max().item()
    assert (out.double() - ref).abs().max().item() <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("m", [1, 16])
def test_cuda_graph_capture_and_replay(m):
    n, k = 4096, 4096
    w = fastcot.quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02, group_size=128)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    out = torch.empty(m, n, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fastcot.ops.int4_matmul(x, w, bias, out=out)  # warm up: autotune and compile outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastcot.ops.int4_matmul(x, w, bias, out=out)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, expected(x, w, bias), atol=1e-3 * 4, rtol=1e-3)


def test_torch_compile_fullgraph():
    w = fastcot.quantize_int4(torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16) * 0.02, group_size=64)
    x = torch.randn(4, 2048, device="cuda", dtype=torch.bfloat16)

    @torch.compile(fullgraph=True)
    def f(t):
        return torch.nn.functional.silu(fastcot.ops.int4_matmul(t, w))

    ref = torch.nn.functional.silu(expected(x, w).float())
    assert_close(f(x), ref, atol=2e-2, rtol=2e-2)


def test_autotuner_picks_a_correct_configuration(monkeypatch):
    from fastcot.ops import int4_matmul as module

    monkeypatch.setenv("FASTCOT_AUTOTUNE", "1")
    monkeypatch.setattr(module, "_autotuner", module.Autotuner())
    w = fastcot.quantize_int4(torch.randn(3000, 4096, device="cuda", dtype=torch.float16) * 0.02, group_size=128)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    with fastcot.backend("triton"):
        out = fastcot.ops.int4_matmul(x, w)
    assert len(module._autotuner.best) == 1
    ref = expected(x, w)
    assert_close(out, ref, atol=1e-3 * max(1.0, ref.abs().max().item()), rtol=1e-3)
