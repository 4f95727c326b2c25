"""`benchmarks/bench_serve.py` against the session's running server: every request completes,
the JSON has the documented fields, and the numbers are consistent with what was asked."""

import json

import pytest
from helpers import import_benchmark, run_benchmark


def test_bench_serve_against_a_running_server(plain_server, tmp_path):
    proc = run_benchmark("bench_serve", "--url", plain_server.url, "--model", "tiny", "--api-key", plain_server.api_key,
                         "--num-clients", "4", "--num-requests", "6", "--input-len", "8", "--output-len", "6",
                         "--device", "cpu", "--out-dir", str(tmp_path), timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "TTFT p50/p90/p99 ms" in proc.stdout and proc.stdout.rstrip().splitlines()[-1].startswith("wrote ")
    files = sorted(tmp_path.glob("serve__cpu__*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["family"] == "serve" and doc["config"]["num_clients"] == 4
    (row,) = doc["rows"]
    assert (row["num_requests"], row["errors"], row["output_tokens"]) == (6, 0, 36)
    assert row["mean_prompt_tokens"] > 8
    for name in ("ttft", "itl"):
        assert 0 < row[f"{name}_p50_ms"] <= row[f"{name}_p90_ms"] <= row[f"{name}_p99_ms"]
    assert row["output_tok_per_s"] == row["output_tokens"] / row["wall_s"]


@pytest.mark.parametrize("args, words", [([], "--url"), (["--url", "http://127.0.0.1:1"], "--model"),
                                         (["--launch", "m", "--num-clients", "0"], "--num-clients")])
def test_bench_serve_refuses_bad_options(args, words, capsys):
    bench = import_benchmark("bench_serve")
    with pytest.raises(SystemExit) as info:
        bench.parse_args(args)
    assert info.value.code == 2 and words in capsys.readouterr().err
