"""Programmatic dependent launch of the Triton int4 kernels (fastcot/kernels/pdl.py), read from
their sm_90 and sm_80 SASS and from the launchers' recorded launches.

On sm_90 a kernel launched with `launch_pdl=True` may run while the previous kernel finishes:
before `griddepcontrol.wait` (SASS `ACQBULK`) it may only read what no earlier kernel writes
(the weights, scales and zeros), never x and never write. The SASS is compiled in a subprocess
without TRITON_INTERPRET (the interpreter replaces the kernels)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fastcot.kernels.triton import int4_gemv
from fastcot.kernels.triton import int4_matmul as kernels
from fastcot.ops._int4_configs import Autotuner, candidate_configs
from fastcot.ops.int4_matmul import int4_matmul_triton
from fastcot.static import cubins
from fastcot.static.targets import triton_launches

META = torch.device("meta")
N = K = 4096
GROUP = 128
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Compiles the main kernel of each (M, dtype, arch) launch and prints, per kernel, its launch
# flags and the SASS instructions before the first ACQBULK (all of them when there is none).
_SCRIPT = r"""
import json, sys
import torch
from fastcot.kernels.triton import int4_gemv
from fastcot.kernels.triton import int4_matmul as kernels
from fastcot.ops._int4_configs import Autotuner, candidate_configs
from fastcot.ops.int4_matmul import int4_matmul_triton
from fastcot.static import cubins
from fastcot.static.targets import triton_launches

META = torch.device("meta")
out = []
for m, dtype, arch in json.loads(sys.argv[1]):
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    n = k = 4096
    x = torch.empty((m, k), dtype=dt, device=META)
    qweight = torch.empty((n, k // 8), dtype=torch.int32, device=META)
    scales = torch.empty((k // 128, n), dtype=dt, device=META)
    result = torch.empty((m, n), dtype=dt, device=META)
    config = Autotuner().pick(None, candidate_configs(m, n, k, 128, 132 if arch >= 90 else 108), None, META)
    with triton_launches(kernels._int4_matmul_kernel, kernels._splitk_reduce_kernel,
                         int4_gemv._int4_gemv_kernel) as calls:
        int4_matmul_triton(x, qweight, scales, scales, None, 128, None, result, config=config, arch=arch)
    fn, _, kwargs = calls[0]
    instrs = cubins.triton_kernel(fn, kwargs, arch).instructions
    waits = [i for i, ins in enumerate(instrs) if ins.base == "ACQBULK"]
    before = instrs[:waits[0]] if waits else instrs
    out.append({"m": m, "dtype": dtype, "arch": arch, "kernel": fn.__name__, "launch_pdl": kwargs["launch_pdl"],
                "waits": len(waits), "before": [ins.opcode for ins in before]})
print(json.dumps(out))
"""

CASES = [(m, dtype, arch) for arch in (90, 80) for m in (1, 16) for dtype in ("fp16", "bf16")]


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTCOT_PDL")}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(CASES)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(r["m"], r["dtype"], r["arch"]): r for r in json.loads(proc.stdout)}


def _is_global_write(opcode: str) -> bool:
    base = opcode.split(".")[0]
    return base in ("STG", "ATOM", "ATOMG", "RED", "REDG", "STAS", "UBLKCP")


@pytest.mark.skipif(cubins.find_cuobjdump() is None, reason="no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)")
@pytest.mark.parametrize("m, dtype", [(1, "fp16"), (1, "bf16"), (16, "fp16"), (16, "bf16")])
def test_sm90_kernels_stream_weights_before_the_wait_and_write_after_it(compiled, m, dtype):
    r = compiled[(m, dtype, 90)]
    assert r["kernel"] == ("_int4_gemv_kernel" if m == 1 else "_int4_matmul_kernel")
    assert r["launch_pdl"] is True
    assert r["waits"] >= 1, "no griddepcontrol.wait (ACQBULK) in the sm_90 kernel"
    before = r["before"]
    assert "PREEXIT" in before, "griddepcontrol.launch_dependents should come before the wait"
    writes = [op for op in before if _is_global_write(op)]
    assert not writes, f"global writes before the wait: {writes}"
    # x (the previous kernel's output) is loaded with evict_last, the weights with evict_first.
    x_loads = [op for op in before if op.startswith("LDG") and ".EL" in op.split(".")]
    assert not x_loads, f"x loaded before the wait: {x_loads}"
    weight_loads = [op for op in before if op.startswith("LDG")]
    prefetches = [op for op in before if op.startswith("CCTL") and "PF2" in op.split(".")]
    if m == 1:
        # The GEMV loads its first half-step into registers and fetches the rest into L2.
        assert weight_loads and prefetches, before
    else:
        # Triton's pipeliner issues the loop's prologue loads right before the loop, after the
        # wait: the first two steps are fetched into L2 before it instead.
        assert prefetches, before


@pytest.mark.skipif(cubins.find_cuobjdump() is None, reason="no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)")
@pytest.mark.parametrize("m, dtype", [(1, "fp16"), (1, "bf16"), (16, "fp16"), (16, "bf16")])
def test_sm80_kernels_have_no_grid_dependency_control(compiled, m, dtype):
    r = compiled[(m, dtype, 80)]
    assert r["launch_pdl"] is False and r["waits"] == 0
    assert not any(op in ("PREEXIT", "ACQBULK") or op.startswith("CCTL.E.PF2") for op in r["before"])


def _launch_flags(m: int, dtype: str, arch, device=META):
    """(launch_pdl, USE_PDL) of the main kernel as the launcher launches it."""
    dt = DTYPES[dtype]
    x = torch.empty((m, K), dtype=dt, device=device)
    qweight = torch.empty((N, K // 8), dtype=torch.int32, device=device)
    scales = torch.empty((K // GROUP, N), dtype=dt, device=device)
    out = torch.empty((m, N), dtype=dt, device=device)
    config = Autotuner().pick(None, candidate_configs(m, N, K, GROUP, 132), None, device)
    with triton_launches(kernels._int4_matmul_kernel, kernels._splitk_reduce_kernel,
                         int4_gemv._int4_gemv_kernel) as calls:
        int4_matmul_triton(x, qweight, scales, scales, None, GROUP, None, out, config=config, arch=arch)
    kwargs = calls[0][2]
    return kwargs["launch_pdl"], kwargs["USE_PDL"]


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("arch, env, expected", [
    (90, None, True), (100, None, True), (80, None, False), (None, None, False),  # meta tensors: no GPU, no PDL
    (90, "0", False), (90, "1", True),
])
def test_launches_carry_launch_pdl_for_sm90_only(monkeypatch, m, arch, env, expected):
    if env is None:
        monkeypatch.delenv("FASTCOT_PDL", raising=False)
    else:
        monkeypatch.setenv("FASTCOT_PDL", env)
    assert _launch_flags(m, "fp16", arch) == (expected, expected)


def test_the_interpreter_never_gets_pdl(monkeypatch):
    monkeypatch.delenv("FASTCOT_PDL", raising=False)
    # CPU tensors run through the interpreter, which has no inline assembly: whatever arch is asked.
    assert _launch_flags(1, "fp16", 90, device=torch.device("cpu")) == (False, False)
