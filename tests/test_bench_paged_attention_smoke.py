"""The paged attention benchmark runs end to end on CPU and writes JSON in the documented schema.

Runs the script's `--smoke` mode in a subprocess (tiny shapes) into a temp dir, once with the
torch backend and once with the Triton kernels interpreted, and pins the pieces a GPU run
relies on but no CPU run judges: the shuffled paged layout, the grouped-query reference and
the target verdicts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import import_benchmark, run_benchmark
import torch


ENV_KEYS = {"date_utc", "torch", "triton", "cuda_runtime", "git_commit", "git_dirty", "device_type",
            "device_name", "l2_bytes", "copy_bandwidth"}
TIMED_KEYS = ("median_us", "p20_us", "p80_us", "bytes", "gbps", "tflops", "pct_copy_bw", "n_copies")






def _one_json(out_dir: Path) -> dict:
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one JSON file in {out_dir}, got {files}"
    assert files[0].name.startswith("paged_attention__cpu__")
    assert files[0].with_suffix(".csv").exists()
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = run_benchmark("bench_paged_attention", "--smoke", "--prefill", "--reps", "3", "--out-dir", str(out_dir))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, _one_json(out_dir)


def test_help():
    proc = run_benchmark("bench_paged_attention", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--batch", "--context", "--block-size", "--kv-dtype", "--heads", "--quick", "--prefill",
                 "--smoke", "--out-dir", "--mem-fraction"):
        assert flag in proc.stdout


def test_smoke_prints_cpu_label_and_tables(smoke_run):
    proc, _ = smoke_run
    assert "CPU — numbers mean nothing for GPUs" in proc.stdout
    assert "fastcot torch µs" in proc.stdout and "SDPA µs" in proc.stdout
    assert "TFLOP/s" in proc.stdout  # the prefill table
    assert "targets: not judged" in proc.stdout


def test_smoke_json_schema(smoke_run):
    _, doc = smoke_run
    bench = import_benchmark("bench_paged_attention")
    assert doc["schema_version"] == 1 and doc["family"] == "paged_attention"
    assert ENV_KEYS <= doc["env"].keys(), ENV_KEYS - doc["env"].keys()
    assert doc["env"]["device_type"] == "cpu" and doc["env"]["copy_bandwidth"]["gbps"] > 0
    assert doc["targets"]["judged"] is False
    assert doc["implementations"]["sdpa"] is None and doc["implementations"]["fastcot_torch"] is None
    assert doc["implementations"]["fastcot_cuda"]  # a reason string, not silence
    assert doc["peer"]["gqa"] in ("enable_gqa", "repeat_interleave") and "fp8" in doc["peer"]["fp8_peer"]
    assert doc["skipped"] == []

    hq, hkv, d = bench.CPU["heads"]
    plan = doc["config"]["run_plan"]
    rows = doc["rows"]
    expected = {("decode", b, c, bs, kv, "fastcot_torch") for b in bench.CPU["batch"] for c in bench.CPU["context"]
                for bs in bench.CPU["block_size"] for kv in bench.CPU["kv_dtype"]}
    expected |= {("decode", b, c, None, "fp32", "sdpa") for b in bench.CPU["batch"] for c in bench.CPU["context"]}
    expected |= {("prefill", 1, c, n, "fp32", impl) for c in bench.CPU_PREFILL["cached"]
                 for n, impl in ((None, "sdpa"), (plan["block_size"][0], "fastcot_torch"))}
    assert {(r["section"], r["batch"], r["context"], r["block_size"], r["kv_dtype"], r["impl"]) for r in rows} == expected
    for r in rows:
        assert list(r) == list(bench.ROW_KEYS)
        assert r["status"] == "ok", r
        assert (r["num_q_heads"], r["num_kv_heads"], r["head_dim"]) == (hq, hkv, d)
        for key in TIMED_KEYS:
            assert r[key] > 0, (key, r)
        assert r["p20_us"] <= r["median_us"] <= r["p80_us"]
        if r["impl"] == "sdpa":
            continue
        assert r["max_abs_err"] <= r["tol"], r
        assert r["speedup_vs_sdpa"] > 0
        assert (r["speedup_fp8_vs_float_kv"] is not None) == (r["kv_dtype"] == "fp8")
        if r["section"] == "decode":  # K+V actually read, plus q, out, block table and seq_lens
            b, c, bs = r["batch"], r["context"], r["block_size"]
            elem = 1 if r["kv_dtype"] == "fp8" else 4
            assert r["bytes"] == 2 * b * c * hkv * d * elem + 2 * b * hq * d * 4 + 4 * b * (math.ceil(c / bs) + 1)


def test_smoke_interpreted_triton_rows(tmp_path):
    """With TRITON_INTERPRET=1 the Triton kernels get their own checked rows (one tiny shape)."""
    proc = run_benchmark("bench_paged_attention", "--smoke", "--prefill", "--batch", "2", "--context", "40", "--block-size", "16",
                "--kv-dtype", "fp32,fp8", "--reps", "2", "--out-dir", str(tmp_path), interpret=True)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = _one_json(tmp_path)
    assert doc["implementations"]["fastcot_triton"] is None
    triton_rows = [r for r in doc["rows"] if r["impl"] == "fastcot_triton"]
    assert {(r["section"], r["kv_dtype"], r["context"]) for r in triton_rows} == {
        ("decode", "fp32", 40), ("decode", "fp8", 40), ("prefill", "fp32", 0), ("prefill", "fp32", 40)}
    for r in triton_rows:
        assert r["status"] == "ok" and r["max_abs_err"] <= r["tol"], r


def _ctx(**heads):
    bench = import_benchmark("bench_paged_attention")
    return SimpleNamespace(device=torch.device("cpu"), seed=3, heads=bench.Heads(**heads)), bench


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float8_e4m3fn])
def test_paged_layout_holds_the_contiguous_content(kv_dtype):
    """Shuffled blocks gather back to exactly what the contiguous peer sees; unused slots are NaN."""
    ctx, bench = _ctx(q=8, kv=2, dim=16)
    content = bench.Content(ctx, 37, torch.float32)
    scales = bench.FP8_SCALES if kv_dtype == torch.float8_e4m3fn else (1.0, 1.0)
    k_cache, v_cache, tables = bench.build_paged(content, 3, 16, kv_dtype, scales, seed=1)
    assert tables.dtype == torch.int32 and tables.shape == (3, 3)
    assert sorted(tables.flatten().tolist()) == list(range(9))  # every physical block used once
    assert tables.flatten().tolist() != list(range(9))  # and not in order
    k_contig, _ = bench.build_contiguous(content, 3)
    pos = torch.arange(37)
    for s in range(3):
        blocks = tables[s].long()[pos // 16]
        for cache, x, scale in zip((k_cache, v_cache), content.kv(s), scales):
            stored = cache[blocks, pos % 16]
            want = bench.quantize_fp8(x, scale) if kv_dtype == torch.float8_e4m3fn else x
            assert torch.equal(stored.view(torch.uint8), want.view(torch.uint8))
            assert torch.isnan(cache[tables[s, -1].long(), 37 - 32:].float()).all()  # past the end
        assert torch.equal(k_contig[s], content.kv(s)[0].transpose(0, 1))


def test_grouped_query_reference_matches_fastcot_reference():
    """The benchmark's fp32 check (query heads folded into rows) agrees with the project's reference."""
    from fastcot.kernels import reference

    ctx, bench = _ctx(q=8, kv=2, dim=16)
    content = bench.Content(ctx, 37, torch.float32)
    k_cache, v_cache, tables = bench.build_paged(content, 2, 8, torch.float32)
    q = torch.randn(2, 8, 16)
    want = reference.paged_decode_attention(q, k_cache, v_cache, tables, torch.tensor([37, 37], dtype=torch.int32))
    for s in range(2):
        got = bench.decode_reference(q[s], *content.kv(s), scale=16 ** -0.5)
        torch.testing.assert_close(got, want[s], rtol=1e-5, atol=1e-6)


def _row(bench, batch, context, kv, pct=None, median=None, block_size=16, status="ok"):
    row = {key: None for key in bench.ROW_KEYS}
    return row | {"section": "decode", "batch": batch, "context": context, "block_size": block_size, "kv_dtype": kv,
                  "impl": "fastcot_triton", "status": status, "pct_copy_bw": pct, "median_us": median}


def test_targets_verdicts():
    bench = import_benchmark("bench_paged_attention")
    k = 1024
    rows = [_row(bench, 1, 32 * k, "fp16", pct=85.0, median=100.0),
            _row(bench, 1, 32 * k, "fp8", pct=80.0, median=55.0),
            _row(bench, 1, 128 * k, "fp16", pct=70.0, median=400.0),
            _row(bench, 64, 8 * k, "fp16", status="wrong", pct=99.0, median=1.0)]
    results = bench.judge_targets(rows, bench.Heads(32, 8, 128))
    verdicts = {(t["target"], t["batch"], t["context"]): t["status"] for t in results}
    assert verdicts == {("B=1 32k", 1, 32 * k): "PASS", ("B=1 128k", 1, 128 * k): "FAIL",
                        ("B=64 8k", 64, 8 * k): "FAIL",  # a wrong result never passes
                        (bench.FP8_TARGET[0], 1, 32 * k): "PASS"}  # 100 / 55 = 1.8x
    assert all(t["status"] == "n/a" for t in bench.judge_targets(rows, bench.Heads(8, 2, 32)))
    assert [t["status"] for t in bench.judge_targets([], bench.Heads(32, 8, 128))] == ["n/a"] * 4
    print(bench.format_targets(results))  # formats without error, including the FAIL reasons


def test_cuda_column_only_for_ops_with_a_cuda_kernel():
    import fastcot

    bench = import_benchmark("bench_paged_attention")
    assert bench._has_kernel(fastcot, "paged_decode_attention", "cuda")
    assert not bench._has_kernel(fastcot, "paged_prefill_attention", "cuda")
    assert bench._has_kernel(fastcot, "paged_prefill_attention", "triton")


def test_smoke_shared_prefix_rows(smoke_run):
    """Plain and shared-prefix decode of n forked samples: both checked, timed, and the bytes
    each reads per step computed (the shared blocks once per group instead of once per row)."""
    proc, doc = smoke_run
    bench = import_benchmark("bench_paged_attention")
    plan, heads = bench.shared_prefix.CPU, bench.CPU["heads"]
    assert "shared-prefix decode" in proc.stdout
    rows = doc["shared_prefix_rows"]
    assert {(r["n"], r["prompt"], r["impl"], r["backend"]) for r in rows} == {
        (n, p, impl, "torch") for n in plan["n"] for p in plan["prompt"] for impl in ("plain", "shared_prefix")}
    token = 2 * heads[1] * heads[2] * 4  # K and V of one fp32 token
    for r in rows:
        assert list(r) == list(bench.shared_prefix.ROW_KEYS)
        assert r["status"] == "ok" and r["max_abs_err"] <= r["tol"] and r["median_us"] > 0, r
        n, prompt, own = r["n"], r["prompt"], r["suffix"]
        plain = sum(prompt + own + i for i in range(n)) * token
        shared = prompt // 16 * 16
        if r["impl"] == "plain":
            assert r["kv_bytes"] == plain and r["partial_bytes"] == 0
        else:  # one group, one tile at this size: the shared blocks are read once
            assert r["kv_bytes"] == plain - (n - 1) * shared * token and r["partial_bytes"] > 0
            assert r["bytes_vs_plain"] < 1 and r["speedup_vs_plain"] > 0
