"""Programmatic dependent launch of the decode-path kernels other than the int4 GEMVs (RMSNorm,
rotary, SiLU-and-mul, the KV cache write, paged decode and its merge, the cascade decode
kernels, and csrc's paged decode and merge), read from their sm_90 and sm_80 SASS and from the
launchers' recorded launches.

Every input of these kernels may be the previous kernel's output (q from rotary, the cache from
its write, the partials from the decode kernel), so under PDL they wait first: on sm_90 the
listing has griddepcontrol.launch_dependents (SASS `PREEXIT`) and griddepcontrol.wait
(`ACQBULK`) before any global load, store or atomic, and nothing branches past the wait. sm_80
has neither. The Triton SASS is compiled in a subprocess without TRITON_INTERPRET (the
interpreter replaces the kernels)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
from fastcot.static import cubins
from fastcot.static.targets import CUDA_TYPES, triton_launches

META = torch.device("meta")
KERNELS = (_rms_norm_kernel, _rotary_kernel, _silu_and_mul_kernel, paged_kernels._write_kv_cache_kernel,
           paged_kernels._paged_decode_kernel, paged_kernels._decode_merge_kernel,
           cascade_kernels._cascade_prefix_kernel, cascade_kernels._cascade_suffix_kernel,
           cascade_kernels._cascade_merge_kernel)
# Global memory access in SASS (generic LD/ST included; CCTL: a prefetch or cache operation).
GLOBAL_ACCESS = {"LDG", "LD", "STG", "ST", "ATOM", "ATOMG", "RED", "REDG", "LDGSTS", "CCTL", "UBLKCP",
                 "UTMALDG", "UTMASTG", "UTMAPF"}


def _empty(shape, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


def record(case: str, arch, device=META) -> list:
    """[(kernel, launch kwargs)] of one decode-path call as its launcher launches it for SM
    version `arch` (None: the device's) on `device`'s tensors."""
    half, bf16 = torch.float16, torch.bfloat16
    with triton_launches(*KERNELS) as calls:
        if case in ("rms_norm", "rms_norm residual"):
            x, out = _empty((2, 4096), half, device), _empty((2, 4096), half, device)
            residual = _empty((2, 4096), half, device) if case == "rms_norm residual" else None
            rms_norm_triton(x, residual, _empty((4096,), half, device), out, 1e-5, arch=arch)
        elif case == "rotary":
            q, k = _empty((2, 32, 128), bf16, device), _empty((2, 8, 128), bf16, device)
            rotary_embedding_triton(_empty((2,), torch.int64, device), q, k, _empty((64,), torch.int64, device),
                                    torch.empty_like(q), torch.empty_like(k), arch=arch)
        elif case == "silu_and_mul":
            silu_and_mul_triton(_empty((2, 2 * 8192), half, device), _empty((2, 8192), half, device), arch=arch)
        elif case.startswith("write_kv_cache"):
            cache_dtype = torch.float8_e4m3fn if case.endswith("fp8") else bf16
            key = _empty((2, 8 * 128), bf16, device)
            cache = _empty((16, 16, 8, 128), cache_dtype, device)
            _write_triton(key, key, cache, cache, _empty((2,), torch.int32, device), 1.0, 1.0, arch=arch)
        elif case.startswith("paged_decode"):
            fp8 = case.endswith("fp8")
            q = _empty((2, 32, 128), bf16 if fp8 else half, device)
            cache = _empty((64, 16, 8, 128), torch.float8_e4m3fn if fp8 else half, device)
            paged_decode_triton(q, cache, cache, _empty((2, 32), torch.int32, device),
                                _empty((2,), torch.int32, device), torch.empty_like(q), 128 ** -0.5, 1.0, 1.0,
                                num_splits=4, arch=arch)
        elif case == "cascade":
            q = _empty((4, 32, 128), half, device)
            cache = _empty((64, 16, 8, 128), half, device)
            ints = torch.int32
            cascade_decode_triton(q, cache, cache, _empty((4, 16), ints, device), _empty((4,), ints, device),
                                  _empty((1, 4), ints, device), _empty((1,), ints, device),
                                  _empty((1, 8), ints, device), _empty((4,), ints, device), torch.empty_like(q),
                                  128 ** -0.5, 1.0, 1.0, prefix_splits=2, suffix_splits=2, arch=arch)
        else:
            raise ValueError(case)
    return [(fn, kwargs) for fn, _, kwargs in calls]


CASES = ["rms_norm", "rms_norm residual", "rotary", "silu_and_mul", "write_kv_cache", "write_kv_cache fp8",
         "paged_decode", "paged_decode fp8", "cascade"]
SM80_CASES = [c for c in CASES if c != "write_kv_cache fp8"]  # float8 stores need sm_89+

# Compiles every kernel of each (case, arch) launch and prints its launch flags, the SASS
# opcodes before its first ACQBULK (all of them when there is none) and any branch past it.
_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from test_static_pdl_decode import record
from fastcot.static import cubins

out = []
for case, arch in json.loads(sys.argv[1]):
    for fn, kwargs in record(case, arch):
        instrs = cubins.triton_kernel(fn, kwargs, arch).instructions
        waits = [i for i, ins in enumerate(instrs) if ins.base == "ACQBULK"]
        before = instrs[:waits[0]] if waits else instrs
        skipping = [ins.text() for ins in before if waits and ins.target is not None
                    and ins.target > instrs[waits[0]].address]
        out.append({"case": case, "arch": arch, "kernel": fn.__name__, "launch_pdl": kwargs["launch_pdl"],
                    "use_pdl": kwargs["USE_PDL"], "waits": len(waits), "before": [ins.opcode for ins in before],
                    "skipping": skipping})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    if cubins.find_cuobjdump() is None:
        pytest.skip("no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)")
    jobs = [(c, 90) for c in CASES] + [(c, 80) for c in SM80_CASES]
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTCOT_PDL")}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(jobs), str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for r in json.loads(proc.stdout):
        rows.setdefault((r["case"], r["arch"]), []).append(r)
    return rows


EXPECTED_KERNELS = {
    "paged_decode": ["_paged_decode_kernel", "_decode_merge_kernel"],
    "paged_decode fp8": ["_paged_decode_kernel", "_decode_merge_kernel"],
    "cascade": ["_cascade_prefix_kernel", "_cascade_suffix_kernel", "_cascade_merge_kernel"],
}


@pytest.mark.parametrize("case", CASES)
def test_sm90_kernels_wait_before_any_global_access(compiled, case):
    rows = compiled[(case, 90)]
    assert [r["kernel"] for r in rows] == EXPECTED_KERNELS.get(case, [rows[0]["kernel"]])
    for r in rows:
        name = f"{case}: {r['kernel']}"
        assert r["launch_pdl"] is True and r["use_pdl"] is True, name
        assert r["waits"] >= 1, f"{name}: no griddepcontrol.wait (ACQBULK) in the sm_90 kernel"
        assert "PREEXIT" in r["before"], f"{name}: launch_dependents should come before the wait"
        early = [op for op in r["before"] if op.split(".")[0] in GLOBAL_ACCESS]
        assert not early, f"{name}: global memory accessed before the wait: {early}"
        assert not r["skipping"], f"{name}: branches past the wait: {r['skipping']}"


@pytest.mark.parametrize("case", SM80_CASES)
def test_sm80_kernels_have_no_grid_dependency_control(compiled, case):
    for r in compiled[(case, 80)]:
        assert r["launch_pdl"] is False and r["use_pdl"] is False and r["waits"] == 0, r["kernel"]
        assert "PREEXIT" not in r["before"], r["kernel"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("arch, env, expected", [
    (90, None, True), (100, None, True), (80, None, False), (None, None, False),  # meta tensors: no GPU, no PDL
    (90, "0", False), (90, "1", True),
])
def test_launches_carry_launch_pdl_for_sm90_only(monkeypatch, case, arch, env, expected):
    if env is None:
        monkeypatch.delenv("FASTCOT_PDL", raising=False)
    else:
        monkeypatch.setenv("FASTCOT_PDL", env)
    launches = record(case, arch)
    assert launches
    for fn, kwargs in launches:
        assert (kwargs["launch_pdl"], kwargs["USE_PDL"]) == (expected, expected), fn.__name__


@pytest.mark.parametrize("case", ["rms_norm", "rotary", "silu_and_mul", "write_kv_cache", "paged_decode", "cascade"])
def test_the_interpreter_never_gets_pdl(monkeypatch, case):
    monkeypatch.delenv("FASTCOT_PDL", raising=False)
    # CPU tensors run through the interpreter, which has no inline assembly: whatever arch is asked.
    for fn, kwargs in record(case, 90, device=torch.device("cpu")):
        assert (kwargs["launch_pdl"], kwargs["USE_PDL"]) == (False, False), fn.__name__


# --- csrc: paged_decode_kernel and paged_decode_merge_kernel (launch.cuh's launch_kernel) ---

CUDA_SOURCE = (cubins.find_nvcc() is not None and cubins.csrc_dir() is not None) or cubins.extension_path() is not None
NO_CSRC = ("no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)" if cubins.find_cuobjdump() is None
           else None if CUDA_SOURCE else "neither nvcc with csrc/ nor a built fastcot._C: no csrc kernels")
needs_csrc = pytest.mark.skipif(NO_CSRC is not None, reason=str(NO_CSRC))
MERGE_SYMBOL = "_ZN7fastcot25paged_decode_merge_kernelENS_15PagedDecodeArgsEi"


def decode_symbol(cache: str, head_dim: int, group_tile: int) -> str:
    return f"_ZN7fastcot19paged_decode_kernelI{CUDA_TYPES[cache]}Li{head_dim}ELi{group_tile}EEEvNS_15PagedDecodeArgsE"


def _cuda_instructions(symbol: str, arch: int):
    try:
        return cubins.cuda_kernel("paged_decode.cu", symbol, arch).instructions
    except cubins.Unavailable as why:
        pytest.skip(str(why))


CUDA_SYMBOLS = [decode_symbol("fp16", 128, 4), decode_symbol("bf16", 128, 8), decode_symbol("fp8", 128, 4),
                decode_symbol("fp16", 64, 1), MERGE_SYMBOL]


@needs_csrc
@pytest.mark.parametrize("symbol", CUDA_SYMBOLS)
def test_csrc_decode_kernels_wait_before_any_global_access(symbol):
    instrs = _cuda_instructions(symbol, 90)
    waits = [i for i, ins in enumerate(instrs) if ins.base == "ACQBULK"]
    assert len(waits) == 1, f"{symbol}: expected one griddepcontrol.wait (ACQBULK), found {len(waits)}"
    before, wait = instrs[: waits[0]], instrs[waits[0]]
    assert any(ins.base == "PREEXIT" for ins in before), "launch_dependents should come before the wait"
    early = [ins.text() for ins in before if ins.base in GLOBAL_ACCESS]
    assert not early, f"{symbol}: global memory accessed before the wait: {early}"
    skipping = [ins.text() for ins in before if ins.target is not None and ins.target > wait.address]
    assert not skipping, f"{symbol}: branches past the wait: {skipping}"


@needs_csrc
@pytest.mark.parametrize("symbol", [decode_symbol("fp16", 128, 4), MERGE_SYMBOL])
def test_csrc_decode_kernels_on_sm80_have_no_griddepcontrol(symbol):
    assert not {"ACQBULK", "PREEXIT"} & {ins.base for ins in _cuda_instructions(symbol, 80)}
