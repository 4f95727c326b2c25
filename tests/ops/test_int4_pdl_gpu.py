"""Programmatic dependent launch (sm_90+) in the int4 kernels, on a GPU: a kernel that streams
its weights before `griddepcontrol.wait` must still read the x the kernel before it wrote, and
write nothing before that kernel is done. Chains of dependent calls, eager and in a CUDA graph
replayed with fresh inputs, against the float64 reference; a read of a stale x or an early
write gives the previous replay's numbers, or NaN, not a rounding difference."""

import pytest
import torch
from helpers import TOLERANCE, assert_close

import fastcot
from fastcot.kernels import cuda, reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
BACKENDS = ["triton", pytest.param("cuda", marks=pytest.mark.skipif(
    not cuda.available(), reason=f"needs fastcot._C: {cuda.unavailable_reason()}"))]


def weights(dtype, n, k, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", dtype=torch.float32, generator=gen) * k ** -0.5
    return fastcot.quantize_int4(w.to(dtype), group_size=128)


def chain_reference(x0, w1, w2):
    """x1 = 2 x0 + 1 (a torch kernel), y1 = x1 W1^T, y2 = y1 W2^T, each rounded to x's dtype as
    the kernels store it."""
    x1 = x0 * 2 + 1
    y1 = reference.int4_matmul(x1.double(), w1.qweight, w1.scales, w1.zeros, w1.perm, w1.group_size, None,
                               compute_dtype=torch.float64).to(x0.dtype)
    return reference.int4_matmul(y1.double(), w2.qweight, w2.scales, w2.zeros, w2.perm, w2.group_size, None,
                                 compute_dtype=torch.float64)


def close(out, ref, dtype):
    tol = TOLERANCE[dtype]
    scale = max(1.0, ref.abs().max().item())
    # Two roundings to the dtype on the way (y1 and y2): twice the one-call tolerance.
    assert_close(out, ref, atol=2 * tol["atol"] * scale, rtol=2 * tol["rtol"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 16])
def test_dependent_calls_in_a_cuda_graph_see_the_previous_output(backend, dtype, m):
    w1, w2 = weights(dtype, 4096, 4096, 1), weights(dtype, 6144, 4096, 2)
    x0 = torch.randn(m, 4096, device="cuda", dtype=dtype)
    x1 = torch.empty_like(x0)
    y1 = torch.empty(m, 4096, device="cuda", dtype=dtype)
    y2 = torch.empty(m, 6144, device="cuda", dtype=dtype)

    def step():
        torch.mul(x0, 2, out=x1).add_(1)
        y1.fill_(float("nan"))  # written by a kernel just before the GEMV that overwrites it
        fastcot.ops.int4_matmul(x1, w1, out=y1)
        y2.fill_(float("nan"))
        fastcot.ops.int4_matmul(y1, w2, out=y2)

    with fastcot.backend(backend):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # warm-up (compiles, sizes the split-K counters) outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    for _ in range(20):
        x0.copy_(torch.randn_like(x0))
        graph.replay()
        torch.cuda.synchronize()
        close(y2, chain_reference(x0, w1, w2), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_back_to_back_calls_see_each_others_output(backend):
    # Each call's x is the previous call's output: 30 dependent launches without a host sync
    # (weights of variance 1/K keep the values near unit size all along the chain).
    w = weights(torch.float16, 4096, 4096, 3)
    ys = [torch.randn(1, 4096, device="cuda", dtype=torch.float16)]
    with fastcot.backend(backend):
        for _ in range(30):
            ys.append(fastcot.ops.int4_matmul(ys[-1], w))
    torch.cuda.synchronize()
    assert 0.1 < ys[-1].float().abs().mean().item() < 10
    for prev, out in zip(ys[:-1], ys[1:]):
        ref = reference.int4_matmul(prev.double(), w.qweight, w.scales, w.zeros, w.perm, w.group_size, None,
                                    compute_dtype=torch.float64)
        close(out, ref, torch.float16)
