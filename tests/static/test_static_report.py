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
    # The M = 1 GEMV reduces its split of K inside the kernel: one launch.
    assert triton["kernel_name"] == "_int4_gemv_kernel" and triton["extra_launches"] == len(triton["extra_kernels"]) == 0
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


def test_device_machine_takes_the_devices_sms_and_measured_bandwidth():
    from types import SimpleNamespace

    from fastcot.static import compare

    h200 = SimpleNamespace(major=9, minor=0, name="NVIDIA H200", multi_processor_count=132)
    machine, why = compare.device_machine(h200, copy_gbps=4300.0)
    assert why is None and (machine.name, machine.sms, machine.copy_bandwidth_gbs, machine.arch) == (
        "NVIDIA H200", 132, 4300.0, 90)
    machine, why = compare.device_machine(SimpleNamespace(major=8, minor=9, name="L40S", multi_processor_count=142), 800.0)
    assert machine is None and "no model for sm_89" in why


@pytest.mark.skipif(cubins.find_cuobjdump() is None or not CUDA_SOURCE, reason="no cuobjdump or no csrc kernels to read")
def test_benchmark_rows_get_the_prediction_next_to_the_measurement():
    from types import SimpleNamespace

    from fastcot.static import compare

    def bench_row(impl, status="ok", m=1):
        return {"impl": impl, "status": status, "m": m, "n": 4096, "k": 4096, "group_size": 128, "pct_copy_bw": 41.0,
                "model_pct_copy_bw": None, "model_note": None}

    rows = [bench_row("fastcot_cuda"), bench_row("linear_fp16"), bench_row("fastcot_cuda", status="wrong"),
            bench_row("fastcot_cuda", m=64)]
    props = SimpleNamespace(major=9, minor=0, name="NVIDIA H100 80GB HBM3", multi_processor_count=132)

    def shape_of(r):
        return None if r["m"] not in (1, 16) else {"m": r["m"], "n": r["n"], "k": r["k"], "group_size": 128, "dtype": "fp16"}

    assert compare.add_predictions(rows, kernel="int4_matmul", shape_of=shape_of, props=props, copy_gbps=3000.0) is None
    machine, _ = compare.device_machine(props, 3000.0)
    expected, why = compare.predicted_fraction("int4_matmul", shape_of(rows[0]), "cuda", machine)
    assert why is None and rows[0]["model_pct_copy_bw"] == pytest.approx(100 * expected)
    assert [r["model_pct_copy_bw"] for r in rows[1:]] == [None, None, None]  # a peer, a wrong row, M=64
    table = compare.format_comparison(rows, label=lambda r: f"{r['n']}x{r['k']} M={r['m']}")
    assert table.count("fastcot_cuda") == 1 and f"{100 * expected:.0f}" in table and "41" in table


def test_a_launcher_that_cannot_plan_gives_a_row_that_says_why(monkeypatch):
    from fastcot.static import report, targets

    def broken(target, sms, arch):
        raise RuntimeError("cannot plan")

    monkeypatch.setitem(targets.PLANNERS, ("paged_decode_attention", "triton"), broken)
    rows = report.build_rows(kernels=("paged_decode_attention",), backends=("triton",), archs=(90, 80),
                             label_filter="B=64 ctx=8k kv=bf16")
    assert [(r["arch"], r["error"]) for r in rows] == [
        ("sm_90", "the launcher on meta tensors: RuntimeError('cannot plan')"),
        ("sm_80", "the launcher on meta tensors: RuntimeError('cannot plan')")]
    assert set(analyze.FIELDS) <= set(rows[0])
    assert "not available: the launcher on meta tensors" in report.format_table(rows)
