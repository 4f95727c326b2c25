"""Programmatic dependent launch (sm_90+) in the decode-path kernels, on a GPU: RMSNorm, rotary,
the KV cache write, paged decode (and its merge) and SiLU-and-mul each wait for the kernel
before them, whose output they read. One decoder-layer-like chain captured in a CUDA graph and
replayed with fresh inputs, against the reference ops; every intermediate buffer is filled with
NaN at the start of a replay, so a kernel that reads its input before the previous kernel wrote
it gives NaN or the previous replay's numbers, not a rounding difference."""

import pytest
import torch
from helpers import TOLERANCE, assert_close

import fastcot
from fastcot.kernels import cuda, reference
from fastcot.ops.rotary import rope_inv_freq

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DECODE_BACKENDS = ["triton", pytest.param("cuda", marks=pytest.mark.skipif(
    not cuda.available(), reason=f"needs fastcot._C: {cuda.unavailable_reason()}"))]

Q_HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 8, 2, 128, 16
HIDDEN = Q_HEADS * HEAD_DIM
EPS, THETA = 1e-5, 500000.0
BATCH = 4


def close(actual, expected, dtype, factor=4):
    # A few roundings to the dtype on the way (normed, rotated q and k, attention, activation).
    tol = TOLERANCE[dtype]
    scale = max(1.0, expected.abs().max().item())
    assert_close(actual, expected, atol=factor * tol["atol"] * scale, rtol=factor * tol["rtol"])


@pytest.mark.parametrize("decode_backend", DECODE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("context", [256, 4096])  # one split (decode writes out) and split-KV (the merge does)
def test_decoder_layer_chain_in_a_cuda_graph_sees_each_previous_output(decode_backend, dtype, context):
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(dtype)

    width = context // BLOCK_SIZE
    k_cache, v_cache = randn(BATCH * width, BLOCK_SIZE, KV_HEADS, HEAD_DIM), randn(BATCH * width, BLOCK_SIZE,
                                                                                   KV_HEADS, HEAD_DIM)
    block_tables = torch.randperm(BATCH * width, device=dev, generator=gen).to(torch.int32).view(BATCH, width)
    seq_lens = torch.tensor([context, context - 5, context // 2 + 3, 1], dtype=torch.int32, device=dev)
    positions = (seq_lens - 1).long()
    slot_mapping = (block_tables[torch.arange(BATCH, device=dev), positions // BLOCK_SIZE].long() * BLOCK_SIZE
                    + positions % BLOCK_SIZE)
    norm_weight = randn(HIDDEN, scale=0.1) + 1
    # Fresh every replay.
    x0, residual0, value0 = randn(BATCH, HIDDEN), randn(BATCH, HIDDEN), randn(BATCH, KV_HEADS, HEAD_DIM)
    # Written inside the graph.
    x, residual, normed = torch.empty_like(x0), torch.empty_like(x0), torch.empty_like(x0)
    value = torch.empty_like(value0)
    q_rot = torch.empty(BATCH, Q_HEADS, HEAD_DIM, dtype=dtype, device=dev)
    k_rot = torch.empty_like(value0)
    attn = torch.empty_like(q_rot)
    act = torch.empty(BATCH, HIDDEN // 2, dtype=dtype, device=dev)

    def step():
        for buf in (normed, q_rot, k_rot, attn, act):
            buf.fill_(float("nan"))
        residual.copy_(residual0)
        value.copy_(value0)
        torch.mul(x0, 2, out=x).add_(1)  # the kernel just before RMSNorm writes its x
        fastcot.ops.rms_norm(x, norm_weight, EPS, residual=residual, out=normed)
        q = normed.view(BATCH, Q_HEADS, HEAD_DIM)  # q, and its first heads as k
        fastcot.ops.rotary_embedding(positions, q, q[:, :KV_HEADS], head_dim=HEAD_DIM, rope_theta=THETA,
                                     out_q=q_rot, out_k=k_rot)
        fastcot.ops.write_kv_cache(k_rot, value, k_cache, v_cache, slot_mapping)
        with fastcot.backend(decode_backend):
            fastcot.ops.paged_decode_attention(q_rot, k_cache, v_cache, block_tables, seq_lens, out=attn)
        fastcot.ops.silu_and_mul(attn.view(BATCH, HIDDEN), out=act)

    k_cache0, v_cache0 = k_cache.clone(), v_cache.clone()  # the graph rewrites the same slots each time
    with fastcot.backend("triton"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # warm-up (compiles) outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()

    inv_freq = rope_inv_freq(HEAD_DIM, THETA, None, device=dev)
    for _ in range(20):
        for t in (x0, residual0, value0):
            t.copy_(torch.randn(t.shape, device=dev, generator=gen).to(dtype))
        graph.replay()
        torch.cuda.synchronize()

        normed_ref, h_ref = reference.rms_norm(x0 * 2 + 1, norm_weight, EPS, residual0)
        q = normed_ref.view(BATCH, Q_HEADS, HEAD_DIM)
        q_ref, k_ref = reference.rotary_embedding(positions, q, q[:, :KV_HEADS], inv_freq)
        k_cache_ref, v_cache_ref = k_cache0.clone(), v_cache0.clone()
        reference.write_kv_cache(k_ref, value0, k_cache_ref, v_cache_ref, slot_mapping)
        attn_ref = reference.paged_decode_attention(q_ref, k_cache_ref, v_cache_ref, block_tables, seq_lens)
        act_ref = reference.silu_and_mul(attn_ref.view(BATCH, HIDDEN))

        assert torch.equal(residual, h_ref)
        close(normed, normed_ref, dtype, factor=2)
        close(q_rot, q_ref, dtype)
        close(k_cache.view(-1, KV_HEADS, HEAD_DIM)[slot_mapping], k_ref, dtype)
        assert torch.equal(v_cache.view(-1, KV_HEADS, HEAD_DIM)[slot_mapping], value0)
        close(attn, attn_ref, dtype)
        close(act, act_ref, dtype)
