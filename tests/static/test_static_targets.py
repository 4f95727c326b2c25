"""The report's rows launch what the launchers launch: plans captured from the ops on `meta`
tensors agree with the pure configuration helpers, and the mirrors of the C++ launchers agree
with csrc/."""

import math
import re
from pathlib import Path

import pytest

from fastcot.kernels import cuda
from fastcot.kernels.triton import int4_matmul as int4_kernels
from fastcot.ops._int4_configs import candidate_configs
from fastcot.ops.paged_attention import decode_num_splits, decode_splits
from fastcot.static import cubins, targets

REPO = Path(__file__).resolve().parents[2]
INT4 = [t for t in targets.targets() if t.kernel == "int4_matmul"]
DECODE = [t for t in targets.targets() if t.kernel == "paged_decode_attention"]


def test_the_targets_are_the_issues_shapes():
    assert len(INT4) == 2 * 2 * 4 and len(DECODE) == 2 * 3
    assert {(t.shape["n"], t.shape["k"]) for t in INT4} == {(14336, 4096), (4096, 14336), (6144, 4096), (4096, 4096)}
    assert {(t.shape["batch"], t.shape["context"]) for t in DECODE} == {(1, 32768), (1, 131072), (64, 8192)}


@pytest.mark.parametrize("sms", [132, 108])
@pytest.mark.parametrize("target", [t for t in INT4 if t.shape["dtype"] == "fp16"], ids=lambda t: t.label)
def test_triton_int4_plan_is_the_untuned_first_candidate(target, sms):
    s = target.shape
    plan = targets.plan(target, "triton", sms)
    cfg = candidate_configs(s["m"], s["n"], s["k"], 128, sms)[0]
    main = plan.main
    block_m = main.kwargs.get("BLOCK_M", 1)  # the M = 1 GEMV kernel has no BLOCK_M
    assert (block_m, main.kwargs["BLOCK_N"], main.kwargs["BLOCK_K"]) == (cfg.block_m, cfg.block_n, cfg.block_k)
    assert main.threads == 32 * cfg.num_warps and main.kwargs["num_stages"] == cfg.num_stages
    split = main.grid[1]
    assert split <= cfg.split_k and main.grid[0] == math.ceil(s["n"] / cfg.block_n) * math.ceil(s["m"] / cfg.block_m)
    fused = block_m <= 16  # the GEMV and 16-row tiles reduce their split inside the kernel
    assert [launch.name for launch in plan.launches[1:]] == (["_splitk_reduce_kernel"] if split > 1 and not fused else [])
    # Every weight byte (and each group's scale and zero) is streamed once by the grid; the plan
    # counts the last split's K as long as the others (shorter by less than one step per split).
    streamed = s["n"] * s["k"] / 2 + 4 * (s["k"] // 128) * s["n"]
    assert streamed <= plan.grid_blocks * plan.iterations * plan.bytes_per_iteration
    assert plan.grid_blocks * (plan.iterations - 1) * plan.bytes_per_iteration < streamed
    assert "run" not in vars(int4_kernels._int4_matmul_kernel)  # the launch recorder is gone


@pytest.mark.parametrize("sms", [132, 108])
@pytest.mark.parametrize("target", DECODE, ids=lambda t: t.label)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_decode_plans_use_the_launchers_split_count(target, backend, sms):
    s = target.shape
    arch = 90 if sms == 132 else 80
    plan = targets.plan(target, backend, sms, arch)
    splits = decode_splits(backend, s["batch"], s["q_heads"], s["kv_heads"], s["context"], sms, arch=arch,
                           kv_fp8=s["kv_dtype"] == "fp8")
    assert plan.main.grid == (s["batch"], s["kv_heads"], splits)  # GQA 4: one block per KV head
    assert len(plan.launches) == (2 if splits > 1 else 1)
    kv_bytes = s["batch"] * s["context"] * s["kv_heads"] * s["head_dim"] * 2 * (1 if s["kv_dtype"] == "fp8" else 2)
    # Every KV byte once; a split count that does not divide the context leaves the last split
    # short, so the busiest block may stream less than one step more than its share.
    streamed = plan.grid_blocks * plan.iterations * plan.bytes_per_iteration
    assert kv_bytes <= streamed < kv_bytes + plan.grid_blocks * plan.bytes_per_iteration


def test_cuda_int4_plan_mirrors_the_csrc_launcher():
    plan = targets.plan(INT4[4], "cuda", 132)  # M=16 14336x4096 fp16: the tensor-core kernel
    assert plan.config["m_tile"] == 16 and plan.config["warps"] == 4 and plan.config["rows_per_block"] == 32
    assert plan.main.grid == (14336 // 32,) and plan.main.threads == 128
    assert plan.main.symbol == "_ZN7fastcot15int4_mma_kernelI6__halfLi16ELb1EEEvNS_11Int4MmaArgsE"
    assert plan.main.dynamic_shared == 4 * targets.mma_ring_bytes(16) == 4 * 4 * 4 * 32 * 16
    # Every weight byte and each group's scale and zero is streamed exactly once by the grid.
    assert plan.grid_blocks * plan.iterations * plan.bytes_per_iteration == 14336 * 4096 / 2 + 4 * 32 * 14336
    m1 = targets.plan(INT4[0], "cuda", 132)  # M=1: 16 columns a block, at most 8 warps
    assert m1.config["rows_per_block"] == 16 and m1.main.grid == (14336 // 16,)
    assert m1.main.symbol == "_ZN7fastcot15int4_mma_kernelI6__halfLi8ELb1EEEvNS_11Int4MmaArgsE"
    # One wave at the resident threads the kernel is built for, the most warps that allow it.
    assert [targets.mma_warps(n, 32, sms, 768, 16, 8) for n, sms in ((14336, 132), (14336, 108), (4096, 132),
                                                                     (6144, 132))] == [2, 2, 8, 8]
    assert [targets.mma_warps(n, 32, sms, 512, 32, 16) for n, sms in ((14336, 132), (4096, 132), (6144, 132))] \
        == [4, 16, 8]
    assert targets.mma_warps(4096, 3, 132, 768, 16, 8) == 2  # never more warps than chunks
    assert targets.mma_applies("bf16", 4096, -1) and not targets.mma_applies("fp16", 4096, 64)
    assert [targets.gemv_m_tile(m) for m in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    assert targets.gemv_vec(4096, 128) == 4 and targets.gemv_vec(4104, -1) == 1


def test_decode_splits_is_what_the_launchers_computed_inline():
    for batch in (1, 3, 64, 300):
        for kv_heads, q_heads in ((8, 32), (2, 32), (8, 8), (4, 40)):
            for context in (16, 4096, 131072):
                for sms in (108, 132):
                    arch = 90 if sms == 132 else 80
                    assert decode_splits("triton", batch, q_heads, kv_heads, context, sms, arch=arch) == \
                        decode_num_splits(batch, kv_heads, context, sms, arch=arch)
                    assert decode_splits("cuda", batch, q_heads, kv_heads, context, sms) == \
                        cuda.decode_num_splits(batch, q_heads, kv_heads, context, sms, max_splits=64,
                                               min_tokens_per_split=256)


needs_csrc = pytest.mark.skipif(cubins.csrc_dir() is None, reason="no csrc/ in this checkout")


@needs_csrc
def test_cuda_mirrors_match_the_headers():
    gemv = (REPO / "csrc/include/fastcot/int4_gemv.cuh").read_text()
    decode = (REPO / "csrc/include/fastcot/paged_decode.cuh").read_text()
    launcher = (REPO / "csrc/paged_decode.cu").read_text()
    assert f"constexpr int kGemvRows = {targets.GEMV_ROWS};" in gemv
    assert "constexpr int kGemvThreads = kGemvWarps * 32;" in gemv and "constexpr int kGemvWarps = 4;" in gemv
    assert f"constexpr int kDecodeWarps = {targets.DECODE_WARPS};" in decode
    assert "kDecodeThreads = kDecodeWarps * 32;" in decode and targets.DECODE_THREADS == 32 * targets.DECODE_WARPS
    assert "kWarpTokens = 32 / kElem;" in decode and "kTile = kDecodeWarps * kWarpTokens;" in decode
    assert [targets.decode_tile_tokens(e) for e in (2, 1)] == [4 * 16, 4 * 32]
    assert "return D > 128 ? 2 : 3;" in decode  # decode_blocks_per_sm (head_dim <= 128)
    assert f"constexpr int kSplitAlign = {targets.DECODE_SPLIT_ALIGN};" in decode
    assert [cuda.decode_blocks_per_sm(g) for g in (1, 2, 4, 8, 16)] == [3, 3, 3, 3, 3]
    assert "return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;" in launcher
    gemv_launcher = (REPO / "csrc/int4_gemv.cu").read_text()
    assert re.search(r"dim3 grid\(static_cast<unsigned>\(ceil_div\(p\.n, kGemvRows\)\)\)", gemv_launcher)
    mma = (REPO / "csrc/include/fastcot/int4_mma.cuh").read_text()
    assert "return M_TILE == 8 ? 2 : 4;" in mma and [targets.mma_tiles(t) for t in (8, 16)] == [2, 4]  # mma_tiles
    assert f"constexpr int kMmaChunk = {targets.MMA_CHUNK};" in mma
    assert f"constexpr int kMmaMaxWarps = {targets.MMA_MAX_WARPS};" in mma
    assert f"constexpr int kMmaStages = {targets.MMA_STAGES};" in mma
    assert "return kMmaStages * mma_tiles<M_TILE>() * 32 * 16;" in mma  # mma_ring_bytes
    assert "return M_TILE == 8 ? 768 : 512;" in mma and [targets.mma_resident_threads(t) for t in (8, 16)] == [768, 512]
    assert "return M_TILE == 8 ? 8 : kMmaMaxWarps;" in mma and [targets.mma_max_warps(t) for t in (8, 16)] == [8, 16]
    assert re.search(r"dim3 grid\(static_cast<unsigned>\(ceil_div\(p\.n, rows\)\)\)", gemv_launcher)
    assert "constexpr int rows = mma_rows<M_TILE>();" in gemv_launcher
    assert "const int smem = warps * mma_ring_bytes<M_TILE>();" in gemv_launcher
    assert "for (int w = max_warps; w >= 2; w /= 2)" in gemv_launcher
    assert "if (blocks <= int64_t(sms) * (resident / (32 * w)))" in gemv_launcher
    assert "p.k % kMmaChunk == 0 && group_size % kMmaChunk == 0" in gemv_launcher


@needs_csrc
def test_the_cubins_are_built_like_setup_py_builds_the_extension():
    setup = (REPO / "setup.py").read_text()
    assert '"' + " ".join(cubins.NVCC_FLAGS) in setup
    assert 'DEFAULT_ARCHS = "80;90a"' in setup and set(cubins.CUDA_ARCH.values()) == {"sm_80", "sm_90a"}


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_int4_plans_launch_with_pdl_on_sm90_only(backend, monkeypatch):
    target = targets.Target("int4_matmul", {"m": 1, "n": 4096, "k": 4096, "group_size": 128, "dtype": "fp16"})
    monkeypatch.delenv("FASTCOT_PDL", raising=False)
    assert targets.plan(target, backend, 132, 90).main.pdl
    assert not targets.plan(target, backend, 108, 80).main.pdl
    monkeypatch.setenv("FASTCOT_PDL", "0")
    assert not targets.plan(target, backend, 132, 90).main.pdl
