"""The reasoning benchmark runs end to end on CPU and writes JSON in the documented schema.

Runs the script's `--smoke` mode (tiny-random, CPU) in a subprocess into a temp dir, then pins
what a full run relies on: speculative output equals plain greedy output, teacher forcing makes
greedy output follow the reference text, the prefix-sharing bound holds, and the engine's model
is left unpatched.
"""

from __future__ import annotations

import json

import pytest
from helpers import import_benchmark, run_benchmark

ENV_KEYS = {"date_utc", "torch", "git_commit", "git_dirty", "device_type", "device_name", "fastcot_path"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = run_benchmark("bench_reasoning", "--smoke", "--out-dir", str(out_dir))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one JSON file in {out_dir}, got {files}"
    assert files[0].name.startswith("reasoning__cpu__") and files[0].with_suffix(".csv").exists()
    return proc, json.loads(files[0].read_text())


def test_smoke_prints_tables(smoke_run):
    proc, _ = smoke_run
    assert "tok/s" in proc.stdout and "accept" in proc.stdout and "peak/bound" in proc.stdout
    assert "DeepConf on a synthetic task" in proc.stdout and "voted / stopped" in proc.stdout
    assert "suffix k=16" in proc.stdout
    assert "targets: not judged" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("wrote ")


def test_smoke_json_schema(smoke_run):
    _, doc = smoke_run
    bench = import_benchmark("bench_reasoning")
    assert doc["schema_version"] == 1 and doc["family"] == "reasoning"
    assert ENV_KEYS <= doc["env"].keys(), ENV_KEYS - doc["env"].keys()
    assert doc["env"]["device_type"] == "cpu"
    plan = doc["config"]["run_plan"]
    assert plan["model"] == "tiny-random" and plan["k"] == bench._ints(bench.SMOKE["k"])
    rows = doc["rows"]
    for r in rows:
        assert list(r) == list(bench.ROW_KEYS)
        assert r["status"] == "ok", r

    suffix = [r for r in rows if r["section"] == "suffix"]
    assert [(r["text"], r["method"]) for r in suffix] == [(t, m) for t in ("cot", "agent")
                                                          for m in ("plain", "ngram", "suffix")]
    for r in suffix:
        assert r["reference_match"] == 1.0 and r["matches_plain"] in (None, True)
    accepted = {(r["text"], r["method"]): r["tokens_per_forward"] for r in suffix}
    assert accepted["agent", "suffix"] > accepted["agent", "ngram"] > 1.0  # earlier outputs repeat

    spec = [r for r in rows if r["section"] == "speculative"]
    expect = [("cot", 1, k) for k in [None, *plan["k"]]] + [("free", 1, k) for k in [None, *plan["free_k"]]]
    assert [(r["text"], r["batch"], r["k"]) for r in spec] == expect
    for r in spec:
        assert r["generated_tokens"] == plan["generate"] and r["tokens_per_s"] > 0 and r["decode_s"] > 0
        if r["text"] == "cot":
            assert r["reference_match"] == 1.0  # teacher forcing steers greedy output onto the reference
        if r["k"] is None:
            assert r["method"] == "plain" and r["matches_plain"] is None and r["tokens_per_forward"] == 1.0
        else:
            assert r["method"] == "ngram" and r["matches_plain"] is True
            assert r["spec_steps"] > 0 and r["proposed"] > 0 and 0 <= r["accepted"] <= r["proposed"]
            assert r["acceptance_rate"] == pytest.approx(r["accepted"] / r["proposed"])
            assert r["mean_accepted_per_step"] == pytest.approx(r["accepted"] / r["spec_steps"] / r["batch"])
            assert r["tokens_per_forward"] > 1.0
            assert r["speedup"] > 0

    prefix = [r for r in rows if r["section"] == "prefix_sharing"]
    assert [r["n"] for r in prefix] == plan["n"] == [8, 32]
    for r in prefix:
        assert r["bound_status"] == "PASS", r
        assert r["prompt_blocks"] <= r["peak_blocks"] <= r["bound_blocks"] < r["unshared_blocks"]
        assert r["generated_tokens"] == r["n"] * plan["prefix_generate"]

    deepconf = [r for r in rows if r["section"] == "deepconf"]
    methods = [label for label, _, _ in import_benchmark("deepconf_task").MODES]
    assert [(r["text"], r["method"]) for r in deepconf] == [(t, m) for t in ("agree", "trap") for m in methods]
    for r in deepconf:
        assert r["n"] == 24 and r["full_tokens"] > 0 and r["saved_tokens"] == r["full_tokens"] - r["generated_tokens"]
        if r["mode"] == "offline":  # the same seed draws the full vote's very paths
            assert r["saved_tokens"] == 0 and r["voters"] <= 3  # ceil(10% of 24)
        if r["method"] == "online eta=10 all":
            assert r["stopped_low"] > 0 and r["saved_tokens"] > 0

    targets = doc["targets"]
    assert targets["judged"] is True
    assert [t["status"] for t in targets["results"]] == ["not judged", "PASS", "PASS"]


def test_cot_text_is_deterministic_and_repetitive():
    bench = import_benchmark("bench_reasoning")
    a, b = bench.cot_text(0, 3000), bench.cot_text(0, 3000)
    assert a == b and len(a) >= 3000 and a != bench.cot_text(1, 3000)
    assert "Let me check" in a and "Wait," in a and "step by step" in a


def test_teacher_forcing_restores_the_model():
    bench = import_benchmark("bench_reasoning")
    import torch

    from fastcot.models import load_model

    model = load_model("tiny-random", device="cpu")
    forward, logits = type(model).forward, type(model).compute_logits
    with bench.TeacherForcing(model, [5, 6, 7], "cpu") as forcing:
        assert forcing.active and "compute_logits" in vars(model)
    assert "forward" not in vars(model) and "compute_logits" not in vars(model)
    assert type(model).forward is forward and type(model).compute_logits is logits
    hidden = torch.zeros(2, model.config.hidden_size)
    assert model.compute_logits(hidden).shape == (2, model.config.vocab_size)


def test_targets_verdicts():
    bench = import_benchmark("bench_reasoning")

    def row(**kw):
        return {key: None for key in bench.ROW_KEYS} | {"section": "speculative", "text": "cot", "batch": 1,
                                                       "status": "ok"} | kw

    rows = [row(method="plain"), row(method="ngram", k=2, speedup=1.3, acceptance_rate=0.5),
            row(method="ngram", k=4, speedup=1.7, acceptance_rate=0.6),
            row(section="prefix_sharing", n=32, prompt_tokens=4096, peak_blocks=400, bound_blocks=409.6,
                bound_status="PASS")]
    def verdicts(rows, cpu=False):
        return [t["status"] for t in bench.judge_targets(rows, cpu=cpu)["results"]]

    speed = bench.judge_targets(rows, cpu=False)["results"][0]
    assert speed["k"] == 4 and speed["value"] == 1.7
    assert verdicts(rows) == ["PASS", "PASS"]
    assert verdicts(rows, cpu=True) == ["not judged", "PASS"]
    rows[2]["speedup"] = 1.4
    assert verdicts(rows) == ["FAIL", "PASS"]
    rows[2] |= {"speedup": 2.0, "status": "wrong"}  # a fast row with wrong tokens cannot pass
    assert verdicts(rows) == ["FAIL", "PASS"]
    assert verdicts([]) == ["n/a"]
