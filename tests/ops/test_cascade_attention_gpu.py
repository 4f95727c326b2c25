"""GPU-only checks of shared-prefix decode: real sizes (16 samples of an 8k prompt), fp8
caches, CUDA-graph replay with new groups and lengths in fixed-shape buffers, torch.compile."""

import pytest
import torch
from helpers import assert_close
from test_cascade_attention import build, plain_expected

import fastcot
from fastcot.kernels import reference

pytestmark = pytest.mark.gpu


def _forked(n, prompt, dtype, fp8_scale=None):
    own = [prompt + 900 + 37 * i for i in range(n)]
    return build([(prompt, own)], [prompt // 2], block_size=16, hkv=8, gqa=4, head_dim=128, dtype=dtype,
                 device="cuda", fp8_scale=fp8_scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_samples_of_an_8k_prompt(dtype):
    q, k, v, tables, seq_lens, g = _forked(16, 8192 + 5, dtype)  # the shared part ends inside a block
    with fastcot.backend("triton"):
        out = fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **g)
    assert_close(out.float(), plain_expected(q, k, v, tables, seq_lens).float(), atol=2e-2, rtol=2e-2)


def test_fp8_cache_real_size():
    scales = dict(k_scale=0.05, v_scale=0.05)
    q, k, v, tables, seq_lens, g = _forked(8, 4096, torch.bfloat16, fp8_scale=0.05)
    with fastcot.backend("triton"):
        out = fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **g, **scales)
    assert_close(out.float(), plain_expected(q, k, v, tables, seq_lens, **scales).float(), atol=2e-2, rtol=2e-2)


def test_cuda_graph_replay_with_new_groups_and_lengths():
    q, k, v, tables, seq_lens, g = build([(64, [70, 90, 64]), (40, [41, 50])], [33], block_size=16, hkv=2, gqa=4,
                                         head_dim=128, dtype=torch.float16, device="cuda", pad_groups=1)
    out = torch.empty_like(q)

    def call():
        with fastcot.backend("triton"):
            fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **g, out=out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    capacity = (tables < 10**6).sum(dim=1).int() * 16  # tokens each row's allocated blocks hold
    row_shared = torch.where(g["row_groups"] >= 0, g["shared_lens"][g["row_groups"].clamp(min=0).long()], 0)
    for step in range(3):
        # New lengths within each row's blocks and at least its shared part.
        span = (capacity - row_shared + 1).float()
        seq_lens.copy_(row_shared + (torch.rand(span.shape, device="cuda") * span).int().clamp(max=span.int() - 1))
        if step == 1:  # one group dissolves into lone rows
            rows = g["group_rows"][1][g["group_rows"][1] >= 0].long()
            g["row_groups"][rows] = -1
            g["group_rows"][1].fill_(-1)
            g["shared_lens"][1] = 0
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expected = reference.cascade_decode_attention(q.float(), k, v, tables, seq_lens, **g)
        assert_close(out, expected.half(), atol=5e-3, rtol=5e-3)


def test_decode_step_compiles_fullgraph():
    q, k, v, tables, seq_lens, g = _forked(4, 2048, torch.bfloat16)

    @torch.compile(fullgraph=True)
    def step(q):
        return fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **g) + 1

    got = step(q)
    expected = plain_expected(q, k, v, tables, seq_lens) + 1
    assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
