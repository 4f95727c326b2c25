"""The csrc split-KV decode kernel behind `fastcot.ops.paged_decode_attention` (backend
"cuda"): its refusals, which need no GPU, and on a GPU its results against the float64
reference and the Triton kernel, from odd small shapes to 128k contexts."""

import pytest
import torch
from helpers import assert_close, poisoned

import fastcot
from fastcot.kernels import cuda, reference
from fastcot.ops import _backend
from fastcot.ops.paged_attention import MAX_SPLITS, MIN_TOKENS_PER_SPLIT, decode_splits, paged_decode_cuda

FP8 = torch.float8_e4m3fn
needs_cuda_backend = pytest.mark.skipif(
    not torch.cuda.is_available() or not cuda.available(),
    reason=f"needs a CUDA device and fastcot._C: {cuda.unavailable_reason() or 'torch sees no CUDA device'}",
)
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float32: 1e-4}


# ---------------------------------------------------------------- everywhere


def test_float32_caches_are_refused_naming_the_cache():
    q = torch.empty(1, 4, 64)
    with pytest.raises(TypeError, match="k_cache: .*float16, bfloat16 and float8_e4m3fn.*float32"):
        cuda.check_paged_decode(q, torch.empty(2, 16, 4, 64), num_splits=1)


@pytest.mark.parametrize("head_dim", [32, 80, 96, 512])
def test_unsupported_head_dims_are_refused(head_dim):
    q = torch.empty(1, 4, head_dim, dtype=torch.float16)
    with pytest.raises(ValueError, match=rf"head_dim: .*\(64, 128, 256\), got {head_dim}"):
        cuda.check_paged_decode(q, torch.empty(2, 16, 4, head_dim, dtype=torch.float16), num_splits=1)


@pytest.mark.parametrize("num_splits", [0, 65])
def test_split_counts_outside_the_kernel_range_are_refused(num_splits):
    q = torch.empty(1, 4, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="num_splits must be in"):
        cuda.check_paged_decode(q, torch.empty(2, 16, 4, 128, dtype=torch.bfloat16), num_splits=num_splits)


def test_supported_caches_pass_the_check():
    for dtype in (torch.float16, torch.bfloat16, FP8):
        for head_dim in (64, 128, 256):
            cuda.check_paged_decode(torch.empty(2, 8, head_dim, dtype=torch.bfloat16),
                                    torch.empty(4, 16, 2, head_dim, dtype=dtype), num_splits=64)


def test_group_tiles_cover_every_query_head():
    for group in range(1, 40):
        tiles = cuda.decode_group_tiles(group)
        tile = 1 if group == 1 else 2 if group == 2 else 4 if group <= 4 else 8
        assert (tiles - 1) * tile < group <= tiles * tile


def wave_efficiency(grid: int, slots: int) -> float:
    return grid / (-(-grid // slots) * slots)


@pytest.mark.parametrize("sms", [132, 108])
@pytest.mark.parametrize("batch,context", [(1, 32768), (1, 131072), (64, 8192)])
def test_split_counts_fill_whole_waves_at_the_target_shapes(sms, batch, context):
    splits = decode_splits("cuda", batch, 32, 8, context, sms)  # Llama-3-8B: Hq 32, Hkv 8, one tile of 4
    assert wave_efficiency(batch * 8 * splits, sms * cuda.decode_blocks_per_sm(4)) >= 0.9


@pytest.mark.parametrize("sms", [132, 108, 80])
@pytest.mark.parametrize("q_heads,kv_heads", [(32, 8), (64, 8), (8, 8), (40, 4)])
def test_split_counts_are_the_fewest_that_fill_waves_or_the_best_there_is(sms, q_heads, kv_heads):
    group = q_heads // kv_heads
    slots = sms * cuda.decode_blocks_per_sm(group)
    for batch in (1, 2, 5, 64, 300):
        for context in (16, 300, 4096, 131072):
            splits = decode_splits("cuda", batch, q_heads, kv_heads, context, sms)
            blocks = batch * kv_heads * cuda.decode_group_tiles(group)
            cap = max(1, min(MAX_SPLITS, context // MIN_TOKENS_PER_SPLIT))
            assert 1 <= splits <= cap
            if blocks >= 4 * slots:
                assert splits == 1
                continue
            effs = [wave_efficiency(blocks * s, slots) for s in range(1, cap + 1)]
            if max(effs) >= 0.95:
                assert splits == 1 + next(i for i, e in enumerate(effs) if e >= 0.95)
            else:
                assert effs[splits - 1] == max(effs)


def test_cuda_backend_on_cpu_tensors_names_the_backend():
    k_cache = torch.zeros(2, 16, 2, 64)
    tables = torch.zeros(1, 1, dtype=torch.int32)
    lens = torch.ones(1, dtype=torch.int32)
    with fastcot.backend("cuda"), pytest.raises(_backend.BackendError, match="cuda"):
        fastcot.ops.paged_decode_attention(torch.zeros(1, 4, 64), k_cache, k_cache.clone(), tables, lens)


# ---------------------------------------------------------------- on a GPU


def make_case(lens, *, q_heads, kv_heads, head_dim, block_size, dtype, fp8=False, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    batch = len(lens)
    blocks_per_seq = max(1, -(-max(lens) // block_size))
    num_blocks = batch * blocks_per_seq + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    if fp8:
        k_cache = (torch.randn(shape, device="cuda", generator=gen) / 0.05).to(FP8)
        v_cache = (torch.randn(shape, device="cuda", generator=gen) / 0.05).to(FP8)
    else:
        k_cache = torch.randn(shape, device="cuda", generator=gen).to(dtype)
        v_cache = torch.randn(shape, device="cuda", generator=gen).to(dtype)
    perm = torch.randperm(num_blocks, device="cuda", generator=gen)
    tables = perm[: batch * blocks_per_seq].view(batch, blocks_per_seq).to(torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, q_heads, head_dim, device="cuda", generator=gen).to(dtype)
    return q, k_cache, v_cache, tables, seq_lens


def decode(case, backend, **kwargs):
    q = case[0]
    out = poisoned(q.shape, q.dtype, q.device)
    with fastcot.backend(backend):
        result = fastcot.ops.paged_decode_attention(*case, out=out, **kwargs)
    assert result is out
    return out


def expected(case, **kwargs):
    q, k_cache, v_cache, tables, lens = case
    return reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens,
                                            compute_dtype=torch.float64, **kwargs)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("q_heads,kv_heads", [(8, 8), (8, 2), (8, 1), (12, 2), (32, 2)])  # GQA 1, 4, 8, 6, 16
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("block_size", [8, 16, 256])
def test_small_shapes_against_reference_and_triton(dtype, q_heads, kv_heads, head_dim, block_size):
    case = make_case([0, 1, 37, 300, 1000], q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                     block_size=block_size, dtype=dtype)
    out = decode(case, "cuda")
    assert_close(out, expected(case), atol=TOL[dtype], rtol=TOL[dtype])
    assert (out[0] == 0).all(), "a sequence of length 0 gives zeros"
    if block_size == 16:  # one block size is enough for the cross-check; each is a Triton compile
        assert_close(out, decode(case, "triton"), atol=2 * TOL[dtype], rtol=2 * TOL[dtype])


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("lens", [[0, 0], [1, 5], [255, 4097], [0, 2000]])
def test_every_split_count_gives_the_same_answer(num_splits, lens):
    case = make_case(lens, q_heads=32, kv_heads=8, head_dim=128, block_size=16, dtype=torch.float16)
    q, k_cache, v_cache, tables, seq_lens = case
    out = poisoned(q.shape, q.dtype, q.device)
    paged_decode_cuda(q, k_cache, v_cache, tables, seq_lens, out, 128 ** -0.5, 1.0, 1.0, num_splits=num_splits)
    torch.cuda.synchronize()
    assert_close(out, expected(case), atol=TOL[torch.float16], rtol=TOL[torch.float16])


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_fp8_cache_with_scales(q_dtype, head_dim):
    case = make_case([0, 17, 900, 3000], q_heads=16, kv_heads=4, head_dim=head_dim, block_size=16,
                     dtype=q_dtype, fp8=True)
    out = decode(case, "cuda", k_scale=0.05, v_scale=0.05, scale=0.1)
    assert_close(out, expected(case, k_scale=0.05, v_scale=0.05, scale=0.1), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_cuda_backend
def test_strided_query_and_a_wider_block_table():
    q, k_cache, v_cache, tables, lens = make_case([10, 700], q_heads=8, kv_heads=2, head_dim=128, block_size=32,
                                                  dtype=torch.bfloat16)
    wide_q = torch.randn(2, 8, 2 * 128, device="cuda", dtype=torch.bfloat16)[:, :, :128]
    wide_q.copy_(q)
    wide_tables = torch.cat([tables, torch.full_like(tables, -7)], dim=1)  # unused entries are never read
    case = (wide_q, k_cache, v_cache, wide_tables, lens)
    assert_close(decode(case, "cuda"), expected(case), atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])


def long_context_case(context, batch, dtype, *, fp8=False):
    lens = [context - 5] + [context] * (batch - 1)  # not a block multiple
    return make_case(lens, q_heads=32, kv_heads=8, head_dim=128, block_size=16, dtype=dtype, fp8=fp8)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("context,batch", [(8192, 1), (32768, 1), (131072, 1), (8192, 8)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_llama_8b_long_contexts(context, batch, dtype):
    case = long_context_case(context, batch, dtype)
    out = decode(case, "cuda")
    check = min(batch, 2)
    q, k_cache, v_cache, tables, lens = case
    ref = reference.paged_decode_attention(q[:check].float(), k_cache, v_cache, tables[:check], lens[:check])
    assert_close(out[:check], ref, atol=2e-2, rtol=2e-2)
    assert_close(out, decode(case, "triton"), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_cuda_backend
def test_fp8_long_context():
    case = long_context_case(32768, 1, torch.bfloat16, fp8=True)
    out = decode(case, "cuda", k_scale=0.05, v_scale=0.05)
    q, k_cache, v_cache, tables, lens = case
    ref = reference.paged_decode_attention(q.float(), k_cache, v_cache, tables, lens, k_scale=0.05, v_scale=0.05)
    assert_close(out, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_cuda_backend
def test_float32_cache_is_refused_on_the_gpu():
    case = make_case([5], q_heads=4, kv_heads=4, head_dim=64, block_size=16, dtype=torch.float32)
    with pytest.raises(TypeError, match="k_cache"):
        decode(case, "cuda")


@pytest.mark.gpu
@needs_cuda_backend
def test_cuda_graph_replay_with_new_tables_and_lengths():
    q, k_cache, v_cache, tables, lens = long_context_case(4096, 4, torch.float16)
    out = torch.empty_like(q)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), fastcot.backend("cuda"):
        fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), fastcot.backend("cuda"):
        fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out)
    for step in range(3):
        tables.copy_(tables[:, torch.randperm(tables.shape[1], device="cuda")])
        lens.copy_(torch.randint(0, 4096, lens.shape, device="cuda", dtype=torch.int32))
        lens[step] = 0
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.paged_decode_attention(q.float(), k_cache, v_cache, tables, lens)
        assert_close(out, ref, atol=5e-3, rtol=5e-3)
