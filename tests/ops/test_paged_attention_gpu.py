"""GPU-only checks of the paged attention ops: long real contexts, CUDA-graph replay with new
block tables and lengths, torch.compile."""

import pytest
import torch
from helpers import assert_close

import fastcot
from fastcot.kernels import reference

pytestmark = pytest.mark.gpu

FP8 = torch.float8_e4m3fn


def long_context_case(context, batch, dtype, *, block_size=16, q_heads=32, kv_heads=8, head_dim=128, fp8=False):
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq + 1
    shape = (num_blocks, block_size, kv_heads, head_dim)
    if fp8:
        k_cache = (torch.randn(shape, device="cuda") / 0.05).to(FP8)
        v_cache = (torch.randn(shape, device="cuda") / 0.05).to(FP8)
    else:
        k_cache = torch.randn(shape, device="cuda", dtype=dtype)
        v_cache = torch.randn(shape, device="cuda", dtype=dtype)
    tables = torch.randperm(num_blocks, device="cuda")[: batch * blocks_per_seq].view(batch, -1).int()
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    lens[0] = context - 5  # not a block multiple
    q = torch.randn(batch, q_heads, head_dim, device="cuda", dtype=dtype)
    return q, k_cache, v_cache, tables, lens


@pytest.mark.parametrize("context,batch", [(8192, 1), (32768, 1), (131072, 1), (8192, 8)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_long_contexts(context, batch, dtype):
    q, k_cache, v_cache, tables, lens = long_context_case(context, batch, dtype)
    with fastcot.backend("triton"):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens)
    check = min(batch, 2)
    expected = reference.paged_decode_attention(q[:check].float(), k_cache, v_cache, tables[:check], lens[:check])
    assert_close(out[:check], expected, atol=2e-2, rtol=2e-2)


def test_decode_fp8_long_context():
    q, k_cache, v_cache, tables, lens = long_context_case(32768, 1, torch.bfloat16, fp8=True)
    with fastcot.backend("triton"):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, k_scale=0.05, v_scale=0.05)
    expected = reference.paged_decode_attention(q.float(), k_cache, v_cache, tables, lens, k_scale=0.05, v_scale=0.05)
    assert_close(out, expected, atol=2e-2, rtol=2e-2)


def test_decode_cuda_graph_replay_with_new_tables_and_lengths():
    q, k_cache, v_cache, tables, lens = long_context_case(4096, 4, torch.float16)
    out = torch.empty_like(q)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out)
    for step in range(3):
        tables.copy_(tables[:, torch.randperm(tables.shape[1], device="cuda")])
        lens.copy_(torch.randint(0, 4096, lens.shape, device="cuda", dtype=torch.int32))
        lens[step] = 0
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expected = reference.paged_decode_attention(q.float(), k_cache, v_cache, tables, lens)
        assert_close(out, expected, atol=5e-3, rtol=5e-3)


def test_prefill_with_cached_prefix_real_size():
    block_size, kv_heads, q_heads, head_dim = 16, 8, 32, 128
    cached, new = 8192, 2048
    num_blocks = (cached + new) // block_size + 4
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device="cuda")[: (cached + new) // block_size][None].int()
    lens = torch.tensor([cached + new], dtype=torch.int32, device="cuda")
    cu = torch.tensor([0, new], dtype=torch.int32, device="cuda")
    q = torch.randn(new, q_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    with fastcot.backend("triton"):
        out = fastcot.ops.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens)
    expected = reference.paged_prefill_attention(q.float(), k_cache, v_cache, tables, cu, lens)
    assert_close(out, expected, atol=2e-2, rtol=2e-2)


def test_decode_step_compiles_fullgraph():
    q, k_cache, v_cache, tables, lens = long_context_case(2048, 2, torch.bfloat16)
    key = torch.randn(2, 8, 128, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor([5, 77], dtype=torch.int32, device="cuda")

    @torch.compile(fullgraph=True)
    def step(q, key):
        fastcot.ops.write_kv_cache(key, key, k_cache, v_cache, slots)
        return fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens) + 1

    got = step(q, key)
    expected = reference.paged_decode_attention(q.float(), k_cache, v_cache, tables, lens) + 1
    assert_close(got, expected, atol=2e-2, rtol=2e-2)
