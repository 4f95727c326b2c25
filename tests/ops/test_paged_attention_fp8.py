"""The Triton kernels' float8 e4m3 decoding, code by code (by bit operations; by sm_89+'s
`cvt` on a GPU that has it), and fp8 decode through each of its paths: pairs of codes (sm_89+;
under the interpreter with the bit-operation conversion), words of four codes (sm_80), single
bytes (sm_80, head sizes not divisible by 4)."""

import pytest
import torch
import triton
import triton.language as tl
from helpers import TOLERANCE, assert_close, poisoned

from fastcot.kernels import reference
from fastcot.kernels.triton.paged_attention import (
    _e4m3_pairs,
    _e4m3_scaled,
    _fp8_code_pairs,
)
from fastcot.ops import _backend
from fastcot.ops.paged_attention import paged_decode_triton

FP8 = torch.float8_e4m3fn
ON_GPU = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not (ON_GPU or _backend.triton_interpreter_enabled()),
                                reason="Triton needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if ON_GPU else "cpu"


def tolerance(expected: torch.Tensor) -> dict:
    """fp8 KV tolerance (as in test_paged_attention.py), relative to the output's scale."""
    tol = TOLERANCE[torch.float16]
    return dict(atol=tol["atol"] * max(1.0, float(expected.abs().max())), rtol=tol["rtol"])


@triton.jit
def _bytes_kernel(code_ptr, out_ptr, BF16: tl.constexpr):
    offs = tl.arange(0, 256)
    bits = _e4m3_scaled(tl.load(code_ptr + offs), BF16).to(tl.uint16, bitcast=True)
    tl.store(out_ptr + offs, bits.to(tl.int32))  # the bits: torch, not the interpreter, reads them


@triton.jit
def _words_kernel(word_ptr, out_ptr):
    """The halves of each word's two results, back in byte order."""
    offs = tl.arange(0, 64)
    even, odd = _e4m3_pairs(tl.load(word_ptr + offs).to(tl.uint32, bitcast=True))
    tl.store(out_ptr + offs * 4, (even & 0xFFFF).to(tl.int32))
    tl.store(out_ptr + offs * 4 + 1, (odd & 0xFFFF).to(tl.int32))
    tl.store(out_ptr + offs * 4 + 2, (even >> 16).to(tl.int32))
    tl.store(out_ptr + offs * 4 + 3, (odd >> 16).to(tl.int32))


@triton.jit
def _pairs_kernel(pair_ptr, out_ptr, CVT: tl.constexpr):
    """The two results of each int16 pair of codes, back in byte order."""
    offs = tl.arange(0, 128)
    a, b = _fp8_code_pairs(tl.load(pair_ptr + offs), CVT)
    tl.store(out_ptr + offs * 2, a.to(tl.int16, bitcast=True).to(tl.int32))
    tl.store(out_ptr + offs * 2 + 1, b.to(tl.int16, bitcast=True).to(tl.int32))


def _decoded(bf16: bool, path: str) -> torch.Tensor:
    """All 256 codes through `_e4m3_scaled` ("bytes"), `_e4m3_pairs` ("words", float16 only) or
    `_fp8_code_pairs` ("pairs" by bit operations, "cvt" by sm_89+'s instruction), as float64,
    scaled back."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(DEVICE)
    bits = torch.empty(256, dtype=torch.int32, device=DEVICE)
    if path == "words":
        _words_kernel[(1,)](codes.view(torch.int32), bits)
    elif path in ("pairs", "cvt"):
        _pairs_kernel[(1,)](codes.view(torch.int16), bits, CVT=path == "cvt")
    else:
        _bytes_kernel[(1,)](codes, bits, BF16=bf16)
    values = bits.to(torch.int16).view(torch.bfloat16 if bf16 else torch.float16).double()
    return values * (1.0 if path == "cvt" else 2.0 ** (120 if bf16 else 8))


CVT_ON_GPU = ON_GPU and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.parametrize("bf16,path", [
    (False, "bytes"), (True, "bytes"), (False, "words"), (False, "pairs"),
    pytest.param(False, "cvt", marks=pytest.mark.skipif(not CVT_ON_GPU, reason="cvt e4m3x2 needs an sm_89+ GPU")),
], ids=["f16-bytes", "bf16-bytes", "f16-words", "f16-pairs", "f16-cvt"])
def test_every_e4m3_code_decodes_exactly(bf16, path):
    """Every code equals torch's float8_e4m3fn value bit for bit after the folded scale: ±0 keep
    their sign, subnormals are exact, and the NaN codes 0x7F and 0xFF decode to NaN."""
    got = _decoded(bf16, path).cpu()
    want = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).double()
    nan = want.isnan()
    assert nan.sum() == 2 and got[nan].isnan().all()
    assert torch.equal(got[~nan], want[~nan])
    assert torch.equal(torch.signbit(got[~nan]), torch.signbit(want[~nan]))  # -0 stays -0


@pytest.mark.parametrize("head_dim, block_size, group, lens, splits, arch", [
    (64, 8, 1, [37, 0, 1], 1, 90),      # pairs; an empty and a one-token sequence
    (128, 16, 4, [200, 5], 3, 90),      # pairs, split with merge
    (18, 32, 8, [77], 2, 90),           # pairs, head size not divisible by 4
    (64, 8, 1, [37, 0, 1], 1, 80),      # words
    (128, 16, 4, [200, 5], 3, 80),      # words, split with merge
    (18, 32, 8, [77], 2, 80),           # head size not divisible by 4 on sm_80: the byte path
])
def test_fp8_decode_paths_match_reference(head_dim, block_size, group, lens, splits, arch):
    """Each float8 path against the float64 reference; `arch` picks the path (on a GPU, the
    kernel must also compile there: only the GPU's own version, or sm_80 paths, run)."""
    if ON_GPU and arch > 80 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("the pairs path with cvt needs sm_89+")
    torch.manual_seed(head_dim + block_size)
    hkv, dtype = 2, torch.float16
    width = max(-(-n // block_size) for n in lens) + 1
    num_blocks = len(lens) * width
    shape = (num_blocks, block_size, hkv, head_dim)
    k_scale, v_scale = 0.05, 0.02
    k_cache = (torch.randn(shape) * 3 / k_scale).to(FP8).to(DEVICE)
    v_cache = (torch.randn(shape) / v_scale).to(FP8).to(DEVICE)
    tables = torch.randperm(num_blocks, dtype=torch.int32).reshape(len(lens), width).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn(len(lens), hkv * group, head_dim).to(dtype).to(DEVICE)
    out = poisoned(q.shape, dtype, DEVICE)
    paged_decode_triton(q, k_cache, v_cache, tables, seq_lens, out, head_dim ** -0.5, k_scale, v_scale,
                        num_splits=splits, arch=arch)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, seq_lens,
                                                k_scale=k_scale, v_scale=v_scale, compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(expected))


@pytest.mark.parametrize("arch", [90, 80])
def test_fp8_decode_with_a_negative_scale(arch):
    """A negative softmax scale flips which key is largest: the float8 paths keep the running
    maximum in unscaled units only for a positive scale, and match the reference either way."""
    torch.manual_seed(arch)
    k_cache = torch.randn(6, 8, 2, 32).to(FP8).to(DEVICE)
    v_cache = torch.randn(6, 8, 2, 32).to(FP8).to(DEVICE)
    tables = torch.tensor([[4, 1, 5], [0, 2, 3]], dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor([21, 9], dtype=torch.int32, device=DEVICE)
    q = torch.randn(2, 8, 32).half().to(DEVICE)
    for scale in (-0.4, 0.4):
        out = poisoned(q.shape, q.dtype, DEVICE)
        paged_decode_triton(q, k_cache, v_cache, tables, seq_lens, out, scale, 0.5, 2.0, num_splits=2, arch=arch)
        expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, seq_lens, scale,
                                                    k_scale=0.5, v_scale=2.0, compute_dtype=torch.float64)
        assert_close(out, expected, **tolerance(expected))


def test_fp8_nan_code_reaches_the_output():
    """A NaN code in K makes its sequence's output NaN, as the reference does; others stay finite."""
    k_cache = torch.randn(4, 8, 1, 16).to(FP8).to(DEVICE)
    v_cache = torch.randn(4, 8, 1, 16).to(FP8).to(DEVICE)
    k_cache.view(torch.uint8)[1, 3, 0, 5] = 0x7F
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor([16, 16], dtype=torch.int32, device=DEVICE)
    q = torch.randn(2, 2, 16).half().to(DEVICE)
    out = poisoned(q.shape, q.dtype, DEVICE)
    paged_decode_triton(q, k_cache, v_cache, tables, seq_lens, out, 0.25, 1.0, 1.0, num_splits=1)
    assert out[0].isnan().all() and out[1].isfinite().all()


@pytest.mark.parametrize("magnitude,arch", [(1e25, 90), (3e4, 90), (1e-3, 90), (1e-25, 90), (0.0, 90),
                                            (1e25, 80), (1e-25, 80)])
def test_bfloat16_query_over_fp8_cache_at_any_magnitude(magnitude, arch):
    """With a float8 cache a bfloat16 query runs as float16, rescaled by a power of two per
    program (`_query_as_f16`): magnitudes far outside float16's range, tiny ones and zero
    attend as the float64 reference does."""
    torch.manual_seed(7)
    head_dim, hkv, group, block_size = 64, 2, 4, 8
    lens = [40, 9]
    width = 6
    shape = (len(lens) * width, block_size, hkv, head_dim)
    k_scale, v_scale = 0.1, 0.05
    k_cache = (torch.randn(shape) / k_scale).to(FP8).to(DEVICE)
    v_cache = (torch.randn(shape) / v_scale).to(FP8).to(DEVICE)
    tables = torch.randperm(shape[0], dtype=torch.int32).reshape(len(lens), width).to(DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = (torch.randn(len(lens), hkv * group, head_dim) * magnitude).to(torch.bfloat16).to(DEVICE)
    # A softmax scale that keeps the logits of order one, so the test sees the kernel's
    # arithmetic rather than a one-hot softmax.
    scale = 1.0 / max(magnitude, 1e-30) / head_dim ** 0.5 if magnitude else 1.0
    out = poisoned(q.shape, q.dtype, DEVICE)
    paged_decode_triton(q, k_cache, v_cache, tables, seq_lens, out, scale, k_scale, v_scale, num_splits=2, arch=arch)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, seq_lens, scale,
                                                k_scale=k_scale, v_scale=v_scale, compute_dtype=torch.float64)
    tol = TOLERANCE[torch.bfloat16]
    assert_close(out, expected, atol=tol["atol"] * max(1.0, float(expected.abs().max())), rtol=tol["rtol"])
