"""The engine host-overhead benchmark runs end to end on CPU and writes JSON in the documented schema.

Runs the script's `--smoke` mode in a subprocess (tiny sizes) into a temp dir, then pins what
a full run relies on: the step breakdown adds up, the engine is left unpatched after a
measurement, and the target verdicts.
"""

from __future__ import annotations

import json

import pytest
from helpers import import_benchmark, run_benchmark

ENV_KEYS = {"date_utc", "torch", "git_commit", "git_dirty", "device_type", "device_name", "cpu_count", "fastcot_path"}
PARTS = ("schedule_us", "prepare_us", "model_us", "sampling_tensors_us", "sampler_us", "runner_other_us",
         "detokenize_stop_us", "loop_other_us")






@pytest.fixture(scope="module", params=["peaks", "torch"])
def smoke_run(tmp_path_factory, request):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = run_benchmark("bench_engine_overhead", "--smoke", "--sampler", request.param, "--out-dir", str(out_dir))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one JSON file in {out_dir}, got {files}"
    assert files[0].name.startswith("engine_overhead__cpu__") and files[0].with_suffix(".csv").exists()
    return proc, json.loads(files[0].read_text())


def test_help():
    proc = run_benchmark("bench_engine_overhead", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--batch", "--generated", "--vocab", "--tokenizer", "--steps", "--quick", "--smoke", "--out-dir"):
        assert flag in proc.stdout


def test_smoke_prints_table(smoke_run):
    proc, _ = smoke_run
    assert "step µs" in proc.stdout and "host µs" in proc.stdout and "detok+stop" in proc.stdout
    assert "targets: not judged" in proc.stdout


def test_smoke_json_schema(smoke_run):
    _, doc = smoke_run
    bench = import_benchmark("bench_engine_overhead")
    assert doc["schema_version"] == 1 and doc["family"] == "engine_overhead"
    assert ENV_KEYS <= doc["env"].keys(), ENV_KEYS - doc["env"].keys()
    assert doc["targets"] == {"judged": False, "why": "smoke run: tiny sizes"}
    plan = doc["config"]["run_plan"]
    assert plan["vocab"] == bench.SMOKE["vocab"]
    rows = doc["rows"]
    assert [(r["batch"], r["generated"]) for r in rows] == [(b, g) for b in bench.SMOKE["batch"]
                                                           for g in bench.SMOKE["generated"]]
    for r in rows:
        assert list(r) == list(bench.ROW_KEYS)
        assert r["status"] == "ok", r
        assert r["rounds"] == plan["rounds"] == 2  # the smoke run pools two engines per configuration
        assert r["steps"] == 2 * plan["steps"] and r["breakdown_steps"] == 2 * plan["breakdown_steps"]
        assert 0 < r["step_median_us"] <= r["step_p90_us"]
        assert 0 < r["host_median_us"] <= r["step_median_us"]
        assert 0 < r["host_cpu_median_us"] <= r["host_p90_us"] * 2
        # Every sequence starts the timed steps with at least its pretended output plus the warm-up.
        assert r["generated"] + plan["warmup"] <= r["generated_min"] <= r["generated_max"] < r["context_max"]
        for key in PARTS:
            assert r[key] is not None, key
        assert sum(r[k] for k in PARTS) == pytest.approx(r["instrumented_step_us"], rel=1e-6)
        assert r["block_tables_us"] <= r["prepare_us"]


def test_measure_leaves_the_engine_unpatched():
    bench = import_benchmark("bench_engine_overhead")
    from fastcot.engine import model_runner, output_processor

    before = (output_processor.SequenceOutput.observe, model_runner.SamplingTensors)
    args = bench.parse_args(["--smoke", "--vocab", "512"])
    plan = bench.run_plan(args) | {"steps": 3, "breakdown_steps": 2, "warmup": 1}
    row = bench.summarize([bench.measure(bench.Context(args, plan), 2, 40)], 2)
    assert row["steps"] == 3 and row["breakdown_steps"] == 2 and row["generated_min"] >= 40
    assert (output_processor.SequenceOutput.observe, model_runner.SamplingTensors) == before


def _row(bench, batch, generated, host):
    return {key: None for key in bench.ROW_KEYS} | {"batch": batch, "generated": generated, "status": "ok",
                                                   "host_median_us": host, "step_median_us": 2 * host}


def test_targets_verdicts():
    bench = import_benchmark("bench_engine_overhead")
    k = 1024
    rows = [_row(bench, 1, k, 100.0), _row(bench, 1, 100 * k, 109.0),
            _row(bench, 256, k, 1500.0), _row(bench, 256, 100 * k, 2500.0),
            _row(bench, 64, 32 * k, 900.0)]
    results = bench.judge_targets(rows)
    verdicts = {(t["target"], str(t["generated"])): t["status"] for t in results}
    assert verdicts == {
        ("B=1 host < 150 µs", str(k)): "PASS", ("B=1 host < 150 µs", str(100 * k)): "PASS",
        ("B=256 host < 2 ms", str(k)): "PASS", ("B=256 host < 2 ms", str(100 * k)): "FAIL",
        ("B=1 flat 1k -> 100k", str([k, 100 * k])): "PASS",  # 1.09x
        ("B=256 flat 1k -> 100k", str([k, 100 * k])): "FAIL",  # 1.67x
        ("B=64 flat 1k -> 100k", str([32 * k, 32 * k])): "n/a",  # one context only
    }
    assert [t["status"] for t in bench.judge_targets([])] == ["n/a", "n/a"]
    print(bench.format_targets(results))  # formats without error
