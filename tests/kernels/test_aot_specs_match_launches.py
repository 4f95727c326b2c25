"""The AOT spill check compiles hand-written specs of the int4 kernels (`_int4_configs.aot_specs`).
They must be the kernels the launcher compiles: the same constexprs and the same launch options
(`num_warps`, `num_stages`, `maxnreg`). A spec that misses a constexpr with a default checks
another kernel than the one that runs (this once hid a spill on sm_80)."""

import inspect

import pytest
import torch
import triton.language as tl

from fastcot.kernels.triton import int4_gemv
from fastcot.kernels.triton import int4_matmul as kernels
from fastcot.ops._int4_configs import Int4MatmulConfig, aot_specs
from fastcot.ops.int4_matmul import int4_matmul_triton
from fastcot.static.targets import triton_launches

META = torch.device("meta")
GROUP = 128


def _plain_fp16_specs():
    """The specs of each shipped configuration with the common flags (fp16, asymmetric g128),
    without and with programmatic dependent launch (sm_90's)."""
    return [s for s in aot_specs() if s.name.endswith((" fp16 g128", " fp16 g128 pdl"))
            and s.fn is not kernels._splitk_reduce_kernel and s.fn is not kernels._int4_dequantize_kernel]


def _constexpr_names(fn) -> set:
    """The kernel's `tl.constexpr` parameters (a JIT or an interpreted function)."""
    py = getattr(fn, "fn", fn)
    return {name for name, p in inspect.signature(py).parameters.items()
            if p.annotation is tl.constexpr or p.annotation in ("tl.constexpr", "constexpr")}


@pytest.mark.parametrize("spec", _plain_fp16_specs(), ids=lambda s: s.name)
def test_spec_is_the_launched_kernel(spec, monkeypatch):
    monkeypatch.delenv("FASTCOT_PDL", raising=False)
    c = spec.constexprs
    gemv = spec.fn is int4_gemv._int4_gemv_kernel
    block_m = 1 if gemv else c["BLOCK_M"]
    config = Int4MatmulConfig(block_m, c["BLOCK_N"], c["BLOCK_K"], c["SPLIT_K"], c.get("GROUP_M", 1),
                              spec.num_warps, spec.num_stages, max_registers=spec.maxnreg)
    m, n = block_m, 2 * c["BLOCK_N"] + 8
    k = max(c["BLOCK_K"], GROUP) * c["SPLIT_K"] * 2
    x = torch.empty((m, k), dtype=torch.float16, device=META)
    qweight = torch.empty((n, k // 8), dtype=torch.int32, device=META)
    scales = torch.empty((k // GROUP, n), dtype=torch.float16, device=META)
    zeros = torch.empty((k // GROUP, n), dtype=torch.float16, device=META)
    out = torch.empty((m, n), dtype=torch.float16, device=META)
    with triton_launches(kernels._int4_matmul_kernel, kernels._splitk_reduce_kernel,
                         int4_gemv._int4_gemv_kernel) as calls:
        # The launcher's choice for an sm_90 GPU (PDL) or for none (meta tensors: no PDL).
        arch = 90 if spec.constexprs["USE_PDL"] else None
        int4_matmul_triton(x, qweight, scales, zeros, None, GROUP, None, out, config=config, arch=arch)
    fn, _, kwargs = calls[0]
    assert fn is spec.fn
    launched = {name: kwargs[name] for name in _constexpr_names(fn) if name in kwargs}
    assert launched == c, f"{spec.name}: the launcher passes {launched}, the spec compiles {c}"
    assert kwargs["num_warps"] == spec.num_warps and kwargs["num_stages"] == spec.num_stages
    assert kwargs.get("maxnreg") == spec.maxnreg
    assert kwargs["launch_pdl"] == spec.constexprs["USE_PDL"]
