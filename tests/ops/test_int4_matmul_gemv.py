"""The M = 1 Triton GEMV: in-kernel split-K reduction, float minimums, act-order, ragged K, and
the untuned (first) configuration's grid."""

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._int4_configs import (
    GEMV_TILES,
    SHORT_STEPS,
    SHORT_TILE,
    Int4MatmulConfig,
    candidate_configs,
    short_config,
    triton_cdiv,
)
from fastcot.ops.int4_matmul import _gemv_locks, gemv_split, int4_matmul_triton

TRITON_HERE = torch.cuda.is_available() or _backend.triton_interpreter_enabled()
needs_triton = pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")


def run(x, w, zeros, perm, mins, bias, cfg):
    n = w.shape[0]
    out = poisoned((1, n), x.dtype, x.device)
    int4_matmul_triton(x, w.qweight, w.scales, zeros, perm, w.group_size, bias, out, config=cfg, mins=mins)
    expected = reference.int4_matmul(x.double(), w.qweight, w.scales, zeros, perm, w.group_size, bias,
                                     compute_dtype=torch.float64, mins=mins)
    tol = TOLERANCE[x.dtype]
    assert_close(out, expected, atol=tol["atol"] * max(1.0, expected.abs().max().item()), rtol=tol["rtol"])
    return out


@needs_triton
@pytest.mark.parametrize("form", ["zeros", "symmetric", "mins"])
@pytest.mark.parametrize("n,k,group_size,block_k,split", [
    (45, 136, -1, 64, 3), (45, 136, -1, 128, 1), (70, 448, 64, 128, 4), (70, 384, 128, 128, 2), (33, 96, 32, 64, 1),
])
def test_gemv_forms_act_order_and_ragged_k(form, n, k, group_size, block_k, split, device):
    torch.manual_seed(n * k)
    w = fastcot.quantize_int4(torch.randn(n, k, device=device), group_size=group_size, symmetric=form == "symmetric")
    zeros, mins = w.zeros, None
    if form == "mins":
        zeros, mins = None, torch.randn(w.scales.shape, device=device)
    perm = torch.randperm(k, device=device).to(torch.int32)
    x = torch.randn(1, k, device=device)
    bias = torch.randn(n, device=device)
    run(x, w, zeros, perm, mins, bias, Int4MatmulConfig(1, 16, block_k, split_k=split, num_warps=2))


@needs_triton
def test_split_counters_are_reset_for_the_next_launch(device):
    w = fastcot.quantize_int4(torch.randn(40, 512, device=device), group_size=128)
    x = torch.randn(1, 512, device=device).to(torch.float16)
    cfg = Int4MatmulConfig(1, 16, 64, split_k=5)
    first = run(x, w, w.zeros, None, None, None, cfg)
    assert int(_gemv_locks[x.device][: triton_cdiv(40, 16)].abs().sum()) == 0
    assert torch.equal(run(x, w, w.zeros, None, None, None, cfg), first)  # deterministic order


def test_gemv_split_covers_k_once():
    for k, bk, split in [(4096, 128, 7), (136, 32, 3), (448, 64, 16), (96, 32, 1)]:
        per_split, splits = gemv_split(k, bk, split)
        assert per_split % bk == 0 and splits <= split
        assert (splits - 1) * per_split < k <= splits * per_split


@pytest.mark.parametrize("sms", [132, 108])
@pytest.mark.parametrize("n,k", [(14336, 4096), (4096, 14336), (6144, 4096), (4096, 4096)])
def test_untuned_first_candidate_fills_the_gpu(n, k, sms):
    """What FASTCOT_AUTOTUNE=0 and graph capture run: the heuristic first GEMV configuration,
    whose grid fills the SMs evenly (one wave, or several)."""
    cfg = candidate_configs(1, n, k, 128, sms)[0]
    bn, _, warps, _, per_sm90, per_sm80 = SHORT_TILE if short_config(n, k, 128, sms) else GEMV_TILES[0]
    assert (cfg.block_m, cfg.block_n, cfg.num_warps) == (1, bn, warps)
    slots = (per_sm90 if sms == 132 else per_sm80) * sms
    _, splits = gemv_split(k, cfg.block_k, cfg.split_k)
    grid = triton_cdiv(n, bn) * splits
    if grid <= slots:
        eff = grid / (triton_cdiv(grid, sms) * sms)
    else:
        eff = (grid / slots) / triton_cdiv(grid, slots)
    # Evenly spread over the SMs and using at least half the resident slots (bytes in flight): an
    # even grid of one program per SM is not enough. The wave target is H100's; A100 4096x4096
    # gets 0.81 (176 programs in 324 slots) rather than 0.89 from 96 programs.
    assert grid >= slots / 2
    assert eff >= (0.9 if sms == 132 else 0.8)


@pytest.mark.parametrize("sms", [132, 108])
@pytest.mark.parametrize("n,k", [(14336, 4096), (4096, 14336), (6144, 4096), (4096, 4096), (28672, 4096),
                                 (8192, 8192), (8192, 28672)])
def test_short_programs_take_the_128_wide_tile_on_h100(n, k, sms):
    """The untuned pick is the 128 x 128 tile where its programs run at most SHORT_STEPS steps of K
    on H100 (4096x4096: one, 6144x4096: two); every other shape and A100 keep the 64-wide tiles."""
    cfg = candidate_configs(1, n, k, 128, sms)[0]
    if (n, k, sms) not in ((4096, 4096, 132), (6144, 4096, 132)):
        assert short_config(n, k, 128, sms) is None and cfg.block_k == 64
        return
    assert (cfg.block_n, cfg.block_k, cfg.num_warps, cfg.max_registers) == SHORT_TILE[:4]
    steps = triton_cdiv(triton_cdiv(k, cfg.block_k), cfg.split_k)
    assert steps == (1 if n == 4096 else 2) <= SHORT_STEPS


@needs_triton
@pytest.mark.parametrize("form", ["zeros", "symmetric", "mins"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_16_bit_activations(form, dtype, device):
    """16-bit x, scales in x's dtype: read as int32 pairs (also from an odd offset, which the
    launcher copies); ragged K, two groups per step."""
    n, k = 70, 448
    torch.manual_seed(k + (dtype == torch.bfloat16))
    w = fastcot.quantize_int4(torch.randn(n, k, device=device).to(dtype), group_size=64,
                              symmetric=form == "symmetric")
    zeros, mins = w.zeros, None
    if form == "mins":
        zeros, mins = None, torch.randn(w.scales.shape, device=device).to(dtype)
    x = torch.randn(1, k + 1, device=device).to(dtype)[:, 1:]  # storage offset 1
    out = run(x, w, zeros, None, mins, torch.randn(n, device=device).to(dtype),
              Int4MatmulConfig(1, 32, 128, split_k=2, num_warps=2))
    assert torch.isfinite(out).all()


@needs_triton
@pytest.mark.parametrize("values", ["subnormal", "extreme"])
def test_gemv_float16_pairs_convert_exactly(values, device):
    """Each half of a float16 pair becomes its float32 value: signs, subnormals (a flushed one
    would zero these outputs) and the largest finite values, in both halves."""
    n, k = 64, 256
    torch.manual_seed(1)
    sign = torch.where(torch.rand(k) < 0.5, -1.0, 1.0)
    if values == "subnormal":
        w = fastcot.quantize_int4(torch.randn(n, k, device=device).to(torch.float16) * 100, group_size=128)
        x = torch.randint(1, 1024, (k,)) * 2.0 ** -24 * sign  # every float16 subnormal magnitude range
        x[:4] = torch.tensor([-0.0, 2.0 ** -24, -(2.0 ** -14), 2.0 ** -14])
    else:
        w = fastcot.quantize_int4(torch.randn(n, k, device=device).to(torch.float16) * 0.01, group_size=128)
        x = torch.randn(k)
        x[:4] = torch.tensor([65504.0, -65504.0, -32768.0, 2.0 ** 15 + 32])
    x = x.to(torch.float16).reshape(1, k).to(device)
    out = run(x, w, w.zeros, None, None, None, Int4MatmulConfig(1, 32, 128, split_k=2, num_warps=2))
    assert out.abs().max() > 0.01


def test_gemv_configurations_are_checked():
    w = fastcot.quantize_int4(torch.randn(16, 256), group_size=32)
    for m, cfg, msg in [(2, Int4MatmulConfig(1, 16, 64), "M = 1 only"),
                        (1, Int4MatmulConfig(1, 16, 128), "at most twice the group size"),
                        (1, Int4MatmulConfig(1, 16, 96), "multiple of 64")]:
        x = torch.randn(m, 256)
        with pytest.raises(ValueError, match=msg):
            int4_matmul_triton(x, w.qweight, w.scales, w.zeros, None, 32, None, torch.empty(m, 16), config=cfg)


def test_growing_the_split_k_counters_keeps_the_smaller_buffer_alive():
    # A CUDA graph captured with the smaller buffer still points at it after a larger call.
    import importlib

    ops = importlib.import_module("fastcot.ops.int4_matmul")  # the module, not the op of that name
    device = torch.device("cpu")
    saved = ops._gemv_locks.pop(device, None)
    try:
        small = ops.gemv_locks(device, 10)
        assert small.numel() == 4096 and int(small.abs().sum()) == 0
        assert ops.gemv_locks(device, 4096) is small
        big = ops.gemv_locks(device, 5000)
        assert big.numel() == 8192 and int(big.abs().sum()) == 0
        assert any(t is small for t in ops._retired_locks)
        assert ops.gemv_locks(device, 100) is big
    finally:
        ops._gemv_locks.pop(device, None)
        if saved is not None:
            ops._gemv_locks[device] = saved
