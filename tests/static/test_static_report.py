"""`fastcot bench static` end to end for one row per backend, plus the CLI wiring.

The smoke run compiles one Triton kernel (seconds) and, the first time, csrc/int4_gemv.cu with
nvcc (cached by source hash afterwards). It runs in a subprocess without TRITON_INTERPRET,
which would replace the kernels by interpreted ones (as tests/kernels/test_aot_compile.py does).
"""

import json
import math
import os
import subprocess
import sys

import pytest

from fastcot.cli import main
from fastcot.static import analyze, cubins

CUDA_SOURCE = (cubins.find_nvcc() is not None and cubins.csrc_dir() is not None) or cubins.extension_path() is not None


@pytest.mark.skipif(cubins.find_cuobjdump() is None, reason="no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)")
@pytest.mark.skipif(not CUDA_SOURCE, reason="neither nvcc with csrc/ nor a built fastcot._C: no csrc kernels to read")
def test_one_row_per_backend_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "fastcot", "bench", "static", "--json", "--arch", "90", "--kernel", "int4_matmul",
               "--filter", "M=1 4096x4096 g128 fp16", "--sass-dir", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert "not a measurement" in doc["note"] and doc["machines"]["sm_90"]["sms"] == 132
    rows = doc["rows"]
    assert sorted(r["backend"] for r in rows) == ["cuda", "triton"]
    for r in rows:
        assert r["error"] is None and set(analyze.FIELDS) <= set(r)
        assert r["grid"] == math.prod(r["grid_dims"])
        assert r["waves"] == pytest.approx(r["grid"] / (r["blocks_per_sm"] * 132), abs=1e-3)
        warps = r["threads"] // 32
        assert r["instructions_per_weight"] == pytest.approx(
            r["loop_instructions"] * r["threads"] / r["weights_per_iteration"], abs=0.01)
        assert r["instructions_per_byte"] == pytest.approx(r["loop_instructions"] * warps / r["bytes_per_iteration"], abs=1e-3)
        assert sum(r["loop_mix"].values()) == r["loop_instructions"] <= r["loop_static_instructions"]
        assert r["loaded_bytes_per_iteration"] >= r["weights_per_iteration"] / 2  # the weights, at least
        assert 0 < r["predicted_bw_fraction"] <= 1 and r["bound"] in ("memory", "issue", "latency")
        assert r["regs"] > 0 and r["blocks_per_sm"] > 0 and r["bytes_in_flight_per_sm"] > 0
        listing = (tmp_path / os.path.basename(r["sass_file"])).read_text()
        assert r["kernel_name"] in listing and "hot loop:" in listing
    triton = next(r for r in rows if r["backend"] == "triton")
    assert triton["extra_launches"] == len(triton["extra_kernels"]) == (1 if triton["config"]["split_k"] > 1 else 0)
    assert "model% is a MODEL prediction" in proc.stderr and "Main loops" in proc.stderr


def test_static_is_a_bench_command_with_its_own_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "static", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--sass-dir" in out and "MODEL" in out


def test_bad_options_are_refused_before_anything_compiles(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "static", "--arch", "75"])
    assert exc.value.code == 2
    assert "--arch: choose from [80, 90]" in capsys.readouterr().err
