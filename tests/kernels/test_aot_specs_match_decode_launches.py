"""The AOT spill check compiles hand-written specs of the decode-path kernels (RMSNorm, rotary,
SiLU-and-mul, the cache write, paged decode and its merge, the shared-prefix kernels). Each spec
must name every constexpr of its kernel (USE_PDL included: a default left out checks another
kernel than the one that runs), and what the launchers launch on sm_90 (with PDL) and off it
(without) must be among the specs, for the sm_90 PDL variants only."""

import inspect

import pytest
import torch
import triton.language as tl

from fastcot.kernels.aot import shipped_specs
from fastcot.kernels.triton import cascade_attention as cascade_kernels
from fastcot.kernels.triton import paged_attention as paged_kernels
from fastcot.kernels.triton.activation import _silu_and_mul_kernel
from fastcot.kernels.triton.rms_norm import _rms_norm_kernel
from fastcot.kernels.triton.rotary import _rotary_kernel
from fastcot.ops.activation import silu_and_mul_triton
from fastcot.ops.cascade_attention import cascade_decode_triton
from fastcot.ops.kv_cache import _write_triton
from fastcot.ops.norm import rms_norm_triton
from fastcot.ops.paged_attention import paged_decode_triton
from fastcot.ops.rotary import rotary_embedding_triton
from fastcot.static.targets import triton_launches

META = torch.device("meta")
KERNELS = (_rms_norm_kernel, _rotary_kernel, _silu_and_mul_kernel, paged_kernels._write_kv_cache_kernel,
           paged_kernels._paged_decode_kernel, paged_kernels._decode_merge_kernel,
           cascade_kernels._cascade_prefix_kernel, cascade_kernels._cascade_suffix_kernel,
           cascade_kernels._cascade_merge_kernel)


def _constexpr_names(fn) -> set:
    py = getattr(fn, "fn", fn)
    return {name for name, p in inspect.signature(py).parameters.items()
            if p.annotation is tl.constexpr or p.annotation in ("tl.constexpr", "constexpr")}


def _specs():
    return [s for s in shipped_specs() if s.fn in KERNELS]


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.name)
def test_spec_names_every_constexpr(spec):
    assert set(spec.constexprs) == _constexpr_names(spec.fn)
    assert spec.constexprs["USE_PDL"] == spec.name.endswith(" pdl")
    if spec.constexprs["USE_PDL"]:
        assert spec.archs == (90,), f"{spec.name}: PDL variants are sm_90's"


def _empty(shape, dtype):
    return torch.empty(shape, dtype=dtype, device=META)


def _launch(case: str, arch):
    half, bf16, i32 = torch.float16, torch.bfloat16, torch.int32
    if case == "rms_norm":
        x = _empty((2, 4096), half)
        rms_norm_triton(x, torch.empty_like(x), _empty((4096,), half), torch.empty_like(x), 1e-5, arch=arch)
    elif case == "rotary":
        q, k = _empty((2, 32, 128), bf16), _empty((2, 8, 128), bf16)
        rotary_embedding_triton(_empty((2,), torch.int64), q, k, _empty((64,), torch.int64), torch.empty_like(q),
                                torch.empty_like(k), arch=arch)
    elif case == "silu_and_mul":
        silu_and_mul_triton(_empty((2, 2 * 14336), half), _empty((2, 14336), half), arch=arch)
    elif case == "write_kv_cache":
        key, cache = _empty((2, 8 * 128), bf16), _empty((16, 16, 8, 128), bf16)
        _write_triton(key, key, cache, cache, _empty((2,), i32), 1.0, 1.0, arch=arch)
    elif case == "paged_decode":
        q, cache = _empty((2, 32, 128), half), _empty((64, 16, 8, 128), half)
        paged_decode_triton(q, cache, cache, _empty((2, 32), i32), _empty((2,), i32), torch.empty_like(q),
                            128 ** -0.5, 1.0, 1.0, num_splits=16, arch=arch)
    elif case == "paged_decode fp8":
        q, cache = _empty((2, 32, 128), bf16), _empty((64, 16, 8, 128), torch.float8_e4m3fn)
        paged_decode_triton(q, cache, cache, _empty((2, 32), i32), _empty((2,), i32), torch.empty_like(q),
                            128 ** -0.5, 1.0, 1.0, num_splits=16, arch=arch)
    elif case == "decode_merge":
        q, cache = _empty((2, 32, 128), half), _empty((64, 16, 8, 128), half)
        paged_decode_triton(q, cache, cache, _empty((2, 32), i32), _empty((2,), i32), torch.empty_like(q),
                            128 ** -0.5, 1.0, 1.0, num_splits=64, arch=arch)
    elif case == "cascade":
        q, cache = _empty((4, 32, 128), half), _empty((64, 16, 8, 128), half)
        cascade_decode_triton(q, cache, cache, _empty((4, 16), i32), _empty((4,), i32), _empty((2, 32), i32),
                              _empty((2,), i32), _empty((2, 8), i32), _empty((4,), i32), torch.empty_like(q),
                              128 ** -0.5, 1.0, 1.0, prefix_splits=16, suffix_splits=16, arch=arch)


@pytest.mark.parametrize("case", ["rms_norm", "rotary", "silu_and_mul", "write_kv_cache", "paged_decode",
                                  "paged_decode fp8", "decode_merge", "cascade"])
@pytest.mark.parametrize("arch", [90, 80])
def test_launches_are_among_the_specs(monkeypatch, case, arch):
    monkeypatch.delenv("FASTCOT_PDL", raising=False)
    with triton_launches(*KERNELS) as calls:
        _launch(case, arch)
    specs = _specs()
    checked = 0
    for fn, _, kwargs in calls:
        if case == "decode_merge" and fn is not paged_kernels._decode_merge_kernel:
            continue
        if case.startswith("paged_decode") and fn is not paged_kernels._paged_decode_kernel:
            continue
        launched = {name: kwargs[name] for name in _constexpr_names(fn) if name in kwargs}
        assert launched["USE_PDL"] == kwargs["launch_pdl"] == (arch >= 90)
        matching = [s for s in specs if s.fn is fn and s.constexprs == launched and arch in s.archs
                    and s.num_warps == kwargs["num_warps"] and s.num_stages == kwargs.get("num_stages", s.num_stages)]
        assert matching, f"{fn.__name__} on sm_{arch}: no spec compiles {launched} (num_warps {kwargs['num_warps']})"
        checked += 1
    assert checked >= 1
