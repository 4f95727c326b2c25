"""csrc's PTX helpers on a GPU: each asm path against its portable fallback (the path the SIMT
emulator runs on the CPU), bit for bit. The tensor-core mma is compared on small integers, where
every product and partial sum is exact, so summation order cannot change a bit.

Builds tests/csrc/ptx_helpers.cu with nvcc for the device at hand; skips without a GPU or nvcc.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parents[1] / "csrc" / "include"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc to build tests/csrc/ptx_helpers.cu")
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}{'a' if major == 9 else ''}"
    out = tmp_path_factory.mktemp("ptx") / "ptx_helpers.so"
    subprocess.run([nvcc, "-std=c++17", "-O2", f"-arch={arch}", f"-I{INCLUDE}", "-Xcompiler", "-fPIC", "-shared",
                    str(HERE / "ptx_helpers.cu"), "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _words(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(-2**31, 2**31, (n,), generator=generator, dtype=torch.int64).to(torch.int32)


def test_and_or_lop3_equals_fallback(lib):
    g = torch.Generator().manual_seed(0)
    n = 4099
    a, b, c = (_words(n, g) for _ in range(3))
    host = torch.empty(n, dtype=torch.int32)
    lib.ptx_and_or_host(_ptr(a), _ptr(b), _ptr(c), _ptr(host), ctypes.c_int(n))
    assert torch.equal(host, (a & b) | c)
    a_d, b_d, c_d = a.cuda(), b.cuda(), c.cuda()
    out = torch.full((n,), -1, dtype=torch.int32, device="cuda")
    assert lib.ptx_and_or_device(_ptr(a_d), _ptr(b_d), _ptr(c_d), _ptr(out), ctypes.c_int(n)) == 0
    assert torch.equal(out.cpu(), host)


def test_ldg_stream_loads_what_a_plain_load_does(lib):
    g = torch.Generator().manual_seed(1)
    n = 1037  # 16-byte vectors
    src = _words(4 * n, g).cuda()
    out = torch.zeros_like(src)
    assert lib.ptx_ldg_stream_device(_ptr(src), _ptr(out), ctypes.c_int(n)) == 0
    assert torch.equal(out, src)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mma_16816_equals_fallback_on_exact_inputs(lib, dtype):
    g = torch.Generator().manual_seed(2)
    # Per lane: 4 A registers and 2 B registers of two 16-bit values each, 4 fp32 accumulators.
    a = torch.randint(-8, 9, (32 * 4 * 2,), generator=g).to(dtype).view(torch.int32)
    b = torch.randint(-8, 9, (32 * 2 * 2,), generator=g).to(dtype).view(torch.int32)
    c = torch.randint(-64, 65, (32 * 4,), generator=g).to(torch.float32)
    a_d, b_d, c_d = a.cuda(), b.cuda(), c.cuda()
    d_mma = torch.full((32 * 4,), float("nan"), device="cuda")
    d_fallback = torch.full((32 * 4,), float("nan"), device="cuda")
    bf16 = int(dtype == torch.bfloat16)
    assert lib.ptx_mma_device(_ptr(a_d), _ptr(b_d), _ptr(c_d), _ptr(d_mma), _ptr(d_fallback), ctypes.c_int(bf16)) == 0
    assert torch.equal(d_mma, d_fallback), (d_mma - d_fallback).abs().max()
    assert not torch.equal(d_mma.cpu(), c), "the mma changed nothing"


def test_async_copy_lands_what_a_plain_copy_does(lib):
    g = torch.Generator().manual_seed(3)
    n = 1037  # pairs of 16-byte vectors, a partial block
    src = _words(8 * n, g).cuda()
    out = torch.zeros_like(src)
    assert lib.ptx_async_copy_device(_ptr(src), _ptr(out), ctypes.c_int(n)) == 0
    assert torch.equal(out, src)


def test_opaque_u32_returns_its_argument(lib):
    g = torch.Generator().manual_seed(4)
    a = _words(4099, g).cuda()
    out = torch.zeros_like(a)
    assert lib.ptx_opaque_device(_ptr(a), _ptr(out), ctypes.c_int(a.numel())) == 0
    assert torch.equal(out, a)


def _byte_order(pairs: list[torch.Tensor], even_odd: bool) -> torch.Tensor:
    """(lo, hi) float16 pair words [n] each -> the four values of each word in byte order [n, 4]."""
    halves = torch.stack([p.cpu() for p in pairs]).view(torch.float16).float().view(2, -1, 2)  # pair x word x half
    order = [(0, 0), (1, 0), (0, 1), (1, 1)] if even_odd else [(0, 0), (0, 1), (1, 0), (1, 1)]
    return torch.stack([halves[p, :, h] for p, h in order], dim=1)


def test_fp8_widening_on_the_device_is_the_host_bit_operations_rescaled(lib):
    # Every byte in every position of a word; the device uses the conversion instruction on
    # sm_89+ (exact values, adjacent pairs) and the bit operations on sm_80 (values times 2^-8,
    # even and odd bytes paired), as the host.
    n = 256
    b = torch.arange(n, dtype=torch.int64)
    words = (b | ((b * 7 + 1) % 256) << 8 | ((b * 13 + 2) % 256) << 16 | ((b * 29 + 3) % 256) << 24).to(torch.int32)
    host = [torch.empty(n, dtype=torch.int32) for _ in range(2)]
    lib.ptx_fp8_widen_host(_ptr(words), _ptr(host[0]), _ptr(host[1]), ctypes.c_int(n))
    device = [torch.empty(n, dtype=torch.int32, device="cuda") for _ in range(2)]
    words_d = words.cuda()
    assert lib.ptx_fp8_widen_device(_ptr(words_d), _ptr(device[0]), _ptr(device[1]), ctypes.c_int(n)) == 0
    instruction = torch.cuda.get_device_capability() >= (8, 9)
    device_exponent = 0 if instruction else -8
    codes = torch.stack([words & 0xFF, (words >> 8) & 0xFF, (words >> 16) & 0xFF, (words >> 24) & 0xFF], dim=1)
    exact = codes.to(torch.uint8).view(torch.float8_e4m3fn).float()  # [n, 4]
    nan = exact.isnan()
    got_device = _byte_order(device, even_odd=not instruction) * 2.0 ** -device_exponent
    got_host = _byte_order(host, even_odd=True) * 2.0 ** -lib.ptx_fp8_host_exponent()
    assert torch.equal(got_device[~nan], exact[~nan])
    assert torch.equal(got_host[~nan], exact[~nan])


def test_cvt_e4m3_instruction_equals_fallback_for_every_byte(lib):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("cvt.rn.f16x2.e4m3x2 needs sm_89 or later")
    n = 256
    b = torch.arange(n, dtype=torch.int64)
    words = (b | ((b * 7 + 1) % 256) << 8 | ((b * 13 + 2) % 256) << 16 | ((b * 29 + 3) % 256) << 24).to(torch.int32)
    host = [torch.empty(n, dtype=torch.int32) for _ in range(2)]
    lib.ptx_cvt_e4m3_host(_ptr(words), _ptr(host[0]), _ptr(host[1]), ctypes.c_int(n))
    device = [torch.empty(n, dtype=torch.int32, device="cuda") for _ in range(2)]
    words_d = words.cuda()
    assert lib.ptx_cvt_e4m3_device(_ptr(words_d), _ptr(device[0]), _ptr(device[1]), ctypes.c_int(n)) == 0
    got = torch.stack(device).cpu().view(torch.float16).float()
    want = torch.stack(host).view(torch.float16).float()
    same = (got == want) | (got.isnan() & want.isnan())  # a NaN's payload is not data
    assert bool(same.all()), (got[~same], want[~same])
    codes = torch.stack([words & 0xFF, (words >> 8) & 0xFF, (words >> 16) & 0xFF, (words >> 24) & 0xFF], dim=1)
    exact = codes.to(torch.uint8).view(torch.float8_e4m3fn).float().view(n, 2, 2).permute(1, 0, 2).reshape(2, -1)
    assert bool(((want == exact) | (want.isnan() & exact.isnan())).all())
