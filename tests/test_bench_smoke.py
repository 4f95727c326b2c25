"""The int4 matmul benchmark runs end to end on CPU and writes JSON in the documented schema.

Runs the script's `--smoke` mode in a subprocess (tiny shapes, torch backend) into a temp
dir, so tests never litter benchmarks/results/. Also pins the helpers a GPU run depends on
but that no CPU run exercises: L2 rotation sizing and the tinygemm operand conversion.
"""

from __future__ import annotations

import json

import pytest
from helpers import import_benchmark, run_benchmark
import torch


ENV_KEYS = {"date_utc", "torch", "triton", "cuda_runtime", "git_commit", "git_dirty", "device_type",
            "device_name", "sm_count", "l2_bytes", "copy_bandwidth"}
TIMED_KEYS = ("median_us", "p20_us", "p80_us", "bytes", "gbps", "tflops", "pct_copy_bw", "n_copies")






@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = run_benchmark("bench_int4_matmul", "--smoke", "--reps", "3", "--out-dir", str(out_dir))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one JSON file in {out_dir}, got {files}"
    return proc, files[0]


def test_help():
    proc = run_benchmark("bench_int4_matmul", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--models", "--shapes", "--m", "--group-size", "--dtype", "--quick", "--smoke", "--out-dir"):
        assert flag in proc.stdout


def test_smoke_prints_cpu_label_and_table(smoke_run):
    proc, _ = smoke_run
    assert "CPU — numbers mean nothing for GPUs" in proc.stdout
    assert "fastcot torch µs" in proc.stdout
    assert "targets: not judged" in proc.stdout


def test_smoke_json_schema(smoke_run):
    _, path = smoke_run
    assert path.name.startswith("int4_matmul__cpu__")
    assert path.with_suffix(".csv").exists()
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and doc["family"] == "int4_matmul"
    assert ENV_KEYS <= doc["env"].keys(), ENV_KEYS - doc["env"].keys()
    assert doc["env"]["device_type"] == "cpu"
    assert doc["env"]["copy_bandwidth"]["gbps"] > 0
    assert doc["targets"]["judged"] is False
    assert doc["implementations"]["fastcot_torch"] is None
    assert doc["implementations"]["fastcot_cuda"]  # a reason string, not silence

    bench = import_benchmark("bench_int4_matmul")
    rows = doc["rows"]
    shapes = {(s.n, s.k) for s in bench.CPU_SHAPES}
    expected = {(n, k, m, impl) for n, k in shapes for m in bench.CPU_MS
                for impl in ("linear_fp16", "linear_bf16", "fastcot_torch")}
    assert expected <= {(r["n"], r["k"], r["m"], r["impl"]) for r in rows}
    for r in rows:
        assert list(r) == list(bench.ROW_KEYS)
        assert r["status"] == "ok", r
        for key in TIMED_KEYS:
            assert r[key] > 0, (key, r)
        assert r["p20_us"] <= r["median_us"] <= r["p80_us"]
        assert r["speedup_vs_fp16"] > 0 and r["speedup_vs_bf16"] > 0
        if r["impl"].startswith("fastcot_"):
            assert r["max_abs_err"] <= r["tol"], r
        assert r["bytes"] >= r["m"] * r["k"] * 2  # at least the activations were counted


def test_smoke_interpreted_triton_row(tmp_path):
    """With TRITON_INTERPRET=1 the Triton backend gets its own checked row (one small shape)."""
    proc = run_benchmark("bench_int4_matmul", "--smoke", "--shapes", "96x384", "--m", "1,3", "--reps", "2", "--out-dir", str(tmp_path),
                interpret=True)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    (path,) = tmp_path.glob("*.json")
    rows = json.loads(path.read_text())["rows"]
    triton_rows = [r for r in rows if r["impl"] == "fastcot_triton"]
    assert [r["m"] for r in triton_rows] == [1, 3]
    for r in triton_rows:
        assert (r["n"], r["k"], r["status"]) == (96, 384, "ok"), r
        assert r["max_abs_err"] <= r["tol"]


def test_rotation_exceeds_twice_l2():
    common = import_benchmark("_common")
    l2 = 50 << 20
    for per_copy in (1 << 20, 9 << 20, 34 << 20, 117 << 20):
        n = common.rotation_count(per_copy, l2, max_total_bytes=1 << 40)
        assert n * per_copy > 2 * l2 and (n - 1) * per_copy <= 2 * l2
    assert common.rotation_count(1 << 20, l2, max_total_bytes=10 << 20) == 10  # memory cap wins


def test_tinygemm_operands_match_dequantize():
    """Nibble order and the zero-point translation for torch's `_weight_int4pack_mm`.

    The CUDA op cannot run here; its CPU twin shares the scales_and_zeros semantics
    (`(q - 8) * scale + zero_f`) but takes int32 q, so the nibbles are checked by unpacking.
    """
    import fastcot
    from fastcot.kernels import reference

    bench = import_benchmark("bench_int4_matmul")
    torch.manual_seed(0)
    for symmetric in (False, True):
        qw = fastcot.quantize_int4(torch.randn(64, 256), group_size=64, symmetric=symmetric)
        q_uint8, scales_and_zeros = bench.tinygemm_operands(qw)
        q = reference.unpack_int4_rows(qw.qweight)
        assert q_uint8.dtype == torch.uint8 and q_uint8.shape == (64, 128)
        assert torch.equal((q_uint8 >> 4).int(), q[:, 0::2]) and torch.equal((q_uint8 & 0xF).int(), q[:, 1::2])
        assert scales_and_zeros.shape == (4, 64, 2) and scales_and_zeros.dtype == torch.bfloat16
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            continue
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 8)
        x = torch.randn(5, 256, dtype=torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scales_and_zeros)
        ref = x.float() @ qw.dequantize(torch.float32).t()
        # bf16 scales, zeros and output: about 1% of the output's magnitude at worst.
        assert (y.float() - ref).abs().max() <= 2e-2 * ref.abs().max()


def test_cuda_gemv_limit_matches_the_kernel():
    from fastcot.kernels import cuda

    assert import_benchmark("bench_int4_matmul").CUDA_GEMV_MAX_M == cuda.INT4_GEMV_MAX_M
