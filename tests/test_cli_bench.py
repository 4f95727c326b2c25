"""`fastcot bench NAME ...`: forwards to the repository's benchmark scripts.

Most checks run against a stand-in benchmarks folder (`$FASTCOT_BENCHMARKS_DIR`) whose one
script echoes its arguments and writes a JSON file, so they take milliseconds; one check runs
a real script's `--help` through `python -m fastcot`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastcot import cli_bench
from fastcot.cli import main

FAKE_SCRIPT = '''
import json, sys
from pathlib import Path
args = sys.argv[1:]
if "--help" in args:
    print("usage: fake benchmark")
    sys.exit(0)
out = Path(args[args.index("--out-dir") + 1]) / "e2e__cpu__x.json"
out.write_text(json.dumps({"schema_version": 1, "family": "e2e", "rows": [{"args": args}]}))
print("a table a person reads")
print(f"wrote {out}")
sys.exit(3 if "--fail" in args else 0)
'''


@pytest.fixture
def fake_benchmarks(tmp_path, monkeypatch):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "_common.py").write_text("")
    (folder / "bench_e2e.py").write_text(FAKE_SCRIPT)
    monkeypatch.setenv("FASTCOT_BENCHMARKS_DIR", str(folder))
    return folder


def test_every_benchmark_is_listed(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (script, _) in cli_bench.BENCHMARKS.items():
        assert name in out and script in out


def test_forwards_options_and_exit_status(fake_benchmarks, tmp_path, capfd):
    assert main(["bench", "e2e", "--smoke", "--out-dir", str(tmp_path)]) == 0
    assert "a table a person reads" in capfd.readouterr().out
    assert main(["bench", "e2e", "--fail", "--out-dir", str(tmp_path)]) == 3


def test_json_prints_the_results_and_keeps_the_table_off_stdout(fake_benchmarks, tmp_path, capfd):
    assert main(["bench", "e2e", "--json", "--smoke", "--out-dir", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert doc["family"] == "e2e" and doc["path"].endswith("e2e__cpu__x.json")
    assert doc["rows"][0]["args"] == ["--smoke", "--out-dir", str(tmp_path)]  # --json is fastcot bench's own
    assert "a table a person reads" in err


def test_help_is_the_scripts(fake_benchmarks, capfd):
    assert main(["bench", "e2e", "--help"]) == 0
    out = capfd.readouterr().out
    assert "fastcot bench e2e: runs" in out and "usage: fake benchmark" in out


def test_missing_script_is_a_clear_error(fake_benchmarks, capfd):
    assert main(["bench", "reasoning"]) == 2
    assert "bench_reasoning.py does not exist" in capfd.readouterr().err


def test_missing_benchmarks_folder_is_a_clear_error(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FASTCOT_BENCHMARKS_DIR", str(tmp_path / "nowhere"))
    assert main(["bench", "kernels"]) == 2
    err = capfd.readouterr().err
    assert "not in the installed package" in err and "pip install -e ." in err


def test_real_script_help_through_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "fastcot", "bench", "e2e", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--models", "--weights", "--kv-dtype", "--context", "--batch", "--peers", "--smoke", "--out-dir"):
        assert flag in proc.stdout
