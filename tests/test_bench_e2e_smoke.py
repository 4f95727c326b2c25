"""The end-to-end decode benchmark runs on CPU (tiny-random preset) and writes JSON in the
documented schema; its byte accounting reproduces the issue's H100 rooflines for 8B shapes.

The smoke run is a subprocess into a temp dir, so tests never litter benchmarks/results/.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import import_benchmark, run_benchmark

ENV_KEYS = {"date_utc", "torch", "triton", "cuda_runtime", "git_commit", "git_dirty", "device_type", "device_name",
            "copy_bandwidth"}
TIMED_KEYS = ("step_median_us", "tokens_per_s", "bytes_per_step", "flops_per_step", "gbps", "tflops", "pct_roofline",
              "roofline_tokens_per_s")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = run_benchmark("bench_e2e", "--smoke", "--out-dir", str(out_dir), timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("e2e__cpu__") and files[0].with_suffix(".csv").exists()
    return proc, json.loads(files[0].read_text())


def test_help():
    proc = run_benchmark("bench_e2e", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--models", "--weights", "--kv-dtype", "--context", "--batch", "--peers", "--quick", "--smoke"):
        assert flag in proc.stdout


def test_smoke_prints_cpu_label_table_and_no_targets(smoke):
    proc, _ = smoke
    assert "CPU — numbers mean nothing for GPUs" in proc.stdout
    assert "tok/s" in proc.stdout and "%roof" in proc.stdout
    assert "targets: not judged" in proc.stdout


def test_smoke_json_schema(smoke):
    _, doc = smoke
    bench = import_benchmark("bench_e2e")
    assert doc["schema_version"] == 1 and doc["family"] == "e2e"
    assert ENV_KEYS <= doc["env"].keys(), ENV_KEYS - doc["env"].keys()
    assert doc["env"]["device_type"] == "cpu" and doc["targets"]["judged"] is False
    plan = doc["config"]["run_plan"]
    rows = doc["rows"]
    fastcot = {(r["batch"], r["context"], r["weights"], r["kv_dtype"]) for r in rows if r["impl"] == "fastcot"}
    shapes = [(1, c) for c in plan["context"]] + [(b, c) for b in plan["batch"] for c in plan["batch_context"]]
    assert fastcot == {(b, c, w, kv) for b, c in shapes for w in ("int4", "fp32") for kv in ("fp32", "fp8")}
    engine = {(r["batch"], r["context"], r["weights"], r["kv_dtype"]) for r in rows if r["impl"] == "fastcot_engine"}
    assert engine == {(b, c, "int4", kv) for b, c in shapes for kv in ("fp32", "fp8")}  # all under the prefill cap
    peers = {(r["impl"], r["batch"], r["context"]) for r in rows if not r["impl"].startswith("fastcot")}
    assert peers == {(impl, b, c) for b, c in shapes for impl in ("torch_sdpa", "hf_generate")}
    for r in rows:
        assert list(r) == list(bench.ROW_KEYS)
        assert r["status"] == "ok", r
        for key in TIMED_KEYS:
            assert r[key] > 0, (key, r)
        if r["impl"] == "fastcot_engine":  # a mean from the engine's own metrics: no spread
            assert r["step_p20_us"] is None and r["steps"] == plan["engine_tokens"] - 1 and r["prefill_s"] > 0
        else:
            assert r["step_p20_us"] <= r["step_median_us"] <= r["step_p80_us"]
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1e6 / r["step_median_us"])
        assert r["pct_roofline"] == pytest.approx(100 * r["gbps"] / doc["env"]["copy_bandwidth"]["gbps"])
        if r["impl"] == "fastcot":  # checked against plain PyTorch on the same weights and cache
            assert r["check_rel_err"] <= r["check_tol"] and r["check_top1_agree"] == 1.0
    # fp8 KV moves fewer bytes than float KV; int4 weights fewer than float weights.
    by = {(r["batch"], r["context"], r["weights"], r["kv_dtype"]): r["bytes_per_step"] for r in rows
          if r["impl"] == "fastcot"}
    for b, c in shapes:
        assert by[(b, c, "int4", "fp8")] < by[(b, c, "int4", "fp32")] < by[(b, c, "fp32", "fp32")]


def test_roofline_bytes_match_the_issue_for_8b():
    """8B, int4 g128 decoder, bf16 lm_head: ~700 tokens/s at 1k, ~375 at 32k bf16 KV and ~493
    with fp8 KV at 3.35 TB/s (the issue's H100 figures); computed on the meta device."""
    from fastcot.models import load_model

    bench = import_benchmark("bench_e2e")
    model = load_model("llama-3.1-8b-random", dtype=torch.bfloat16, device="meta", quantization="int4")
    weights = bench.weight_bytes(model)
    for context, kv, expected in ((1024, torch.bfloat16, 700), (32768, torch.bfloat16, 375),
                                  (32768, torch.float8_e4m3fn, 493)):
        nbytes = bench.step_bytes(weights, model.config, batch=1, context=context, kv_dtype=kv)["bytes_per_step"]
        assert 3.35e12 / nbytes == pytest.approx(expected, rel=0.01)


def _row(bench, **fields):
    return {key: None for key in bench.ROW_KEYS} | {"model": "8b", "status": "ok"} | fields


def test_targets_verdicts():
    bench = import_benchmark("bench_e2e")
    k = 1024
    rows = [_row(bench, impl="fastcot", weights="int4", kv_dtype="bf16", batch=1, context=k, tokens_per_s=500.0,
                 roofline_tokens_per_s=650.0),
            _row(bench, impl="fastcot_engine", weights="int4", kv_dtype="bf16", batch=1, context=k, tokens_per_s=400.0,
                 roofline_tokens_per_s=640.0),
            _row(bench, impl="fastcot", weights="int4", kv_dtype="bf16", batch=1, context=32 * k, tokens_per_s=200.0,
                 roofline_tokens_per_s=350.0),
            _row(bench, impl="hf_generate", weights="bf16", kv_dtype="bf16", batch=1, context=k, tokens_per_s=200.0),
            _row(bench, impl="hf_generate_compile", weights="bf16", kv_dtype="bf16", batch=1, context=k,
                 tokens_per_s=300.0),
            _row(bench, impl="hf_generate", weights="bf16", kv_dtype="bf16", batch=1, context=32 * k,
                 tokens_per_s=90.0)]
    results = {(t["target"], t["context"]): t for t in bench.judge_targets(rows, "NVIDIA H100")}
    assert results[("B=1 1k", k)]["status"] == "PASS"
    assert results[("B=1 1k (engine)", k)]["status"] == "FAIL"  # judged again on the engine row that ran
    assert ("B=1 32k bf16 KV (engine)", 32 * k) not in results  # no engine row tried there
    assert results[("B=1 32k bf16 KV", 32 * k)]["status"] == "FAIL"
    assert results[("B=1 32k fp8 KV", 32 * k)]["status"] == "n/a"  # not run
    assert results[("B=64 4k bf16 KV", 4 * k)]["status"] == "n/a"
    vs_hf = results[(">= 2x HF best", k)]
    # Against the best HF row (compiled), with the engine row where one ran (like for like).
    assert vs_hf["status"] == "FAIL" and vs_hf["value"] == pytest.approx(400 / 300) and vs_hf["impl"] == "fastcot_engine"
    vs_hf_32k = results[(">= 2x HF best", 32 * k)]
    assert vs_hf_32k["status"] == "PASS" and vs_hf_32k["impl"] == "fastcot"
    lines = bench.format_targets(list(results.values())).splitlines()[1:]
    assert len(lines) == len(results) and all(line.split()[0] in ("PASS", "FAIL", "n/a") for line in lines)
