"""`benchmarks/plots.py` and `benchmarks/report.py` (the end of `make gpu-check`) on a folder
holding what the gpu-check parts leave: result JSON in the documented schema, junit XML, logs.

The documents are written here, in the schema, with made-up GPU-looking rows: they test the
report's plumbing and are not results.
"""

from __future__ import annotations

import json

import pytest
from helpers import import_benchmark

pytest.importorskip("matplotlib")

ENV = {"date_utc": "2026-01-01T00:00:00+00:00", "torch": "2.11.0", "triton": "3.6.0", "cuda_runtime": "13.0",
       "git_commit": "0" * 40, "git_commit_short": "0000000", "git_dirty": False, "device_type": "cuda",
       "device_name": "NVIDIA H100 80GB HBM3", "copy_bandwidth": {"gbps": 3000.0, "method": "test"}}


def _doc(bench, family, rows, **extra):
    keys = bench.ROW_KEYS
    return {"schema_version": 1, "family": family, "env": ENV, **extra,
            "rows": [{k: None for k in keys} | {"status": "ok"} | r for r in rows]}


def _e2e_rows():
    rows = []
    for i, context in enumerate((1024, 8192, 32768)):
        for impl, weights in (("fastcot", "int4"), ("hf_generate", "bf16")):
            rows.append({"model": "8b", "impl": impl, "label": impl, "weights": weights, "kv_dtype": "bf16",
                         "batch": 1, "context": context, "tokens_per_s": 500.0 / (i + 1) / (1 + (impl != "fastcot")),
                         "roofline_tokens_per_s": 650.0 / (i + 1), "pct_roofline": 70.0})
    return rows


@pytest.fixture
def gpu_folder(tmp_path):
    e2e = import_benchmark("bench_e2e")
    int4 = import_benchmark("bench_int4_matmul")
    attn = import_benchmark("bench_paged_attention")
    docs = {
        "e2e": _doc(e2e, "e2e", _e2e_rows(), config={"run_plan": {"models": ["8b"]}},
                    targets={"judged": True, "results": e2e.judge_targets(
                        [{k: None for k in e2e.ROW_KEYS} | {"status": "ok"} | r for r in _e2e_rows()], "H100")}),
        "int4_matmul": _doc(int4, "int4_matmul", [
            {"model": "8b", "layer": "down", "n": 4096, "k": 14336, "m": m, "impl": impl, "label": impl,
             "pct_copy_bw": bw, "median_us": 10.0, "speedup_vs_fp16": 2.0}
            for m in (1, 16, 64) for impl, bw in (("fastcot_triton", 80.0 / m), ("linear_fp16", 60.0 / m))]),
        "paged_attention": _doc(attn, "paged_attention", [
            {"section": "decode", "batch": 1, "context": c, "block_size": 16, "kv_dtype": "fp16", "impl": "fastcot_triton",
             "label": "fastcot triton", "pct_copy_bw": 85.0, "median_us": 50.0} for c in (8192, 32768)]),
    }
    for family, doc in docs.items():
        (tmp_path / f"{family}__nvidia-h100-80gb-hbm3__20260101T000000Z__0000000.json").write_text(json.dumps(doc))
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.a" name="test_ok"/><testcase classname="tests.a" name="test_bad"><failure/>'
        '</testcase><testcase classname="tests.a" name="test_skip"><skipped/></testcase></testsuite></testsuites>')
    (tmp_path / "tests.log").write_text("log\n")
    (tmp_path / "info.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)",
                                                    "torch": "2.11.0", "cuda_extension": "loaded"}))
    return tmp_path


def test_plots_one_png_per_family(gpu_folder, tmp_path_factory):
    plots = import_benchmark("plots")
    out = tmp_path_factory.mktemp("png")
    assert plots.main([str(gpu_folder), "--out-dir", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(plots.FILES.values())
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_summarizes_tests_targets_rows_and_missing_parts(gpu_folder):
    report = import_benchmark("report")
    assert report.main([str(gpu_folder)]) == 0
    md = (gpu_folder / "report.md").read_text()
    summary = json.loads((gpu_folder / "report.json").read_text())
    assert "NVIDIA H100" in md and "1 passed, 1 failed, 0 errors, 1 skipped" in md and "FAILED tests.a::test_bad" in md
    assert "## Targets" in md and "| e2e | PASS | B=1 1k |" in md
    assert "| 8b | 1 | 1k | fastcot | int4 | bf16 | 500.0 | 70 | 650 | ok |" in md
    assert summary["missing"] == ["engine_overhead"] and "engine_overhead" in md
    assert sorted(summary["plots"]) == sorted(p.name for p in gpu_folder.glob("*.png")) and len(summary["plots"]) == 3
    assert {b["family"] for b in summary["benchmarks"]} == {"e2e", "int4_matmul", "paged_attention"}
    assert summary["tests"]["failed"] == ["tests.a::test_bad"]


def test_report_on_an_empty_folder_says_what_is_missing(tmp_path):
    report = import_benchmark("report")
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "no info.json" in md and "no tests.xml" in md and "Missing" in md
