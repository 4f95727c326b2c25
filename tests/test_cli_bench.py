"""`fastcot bench NAME ...`: forwards to the repository's benchmark scripts.

Most checks run against a stand-in benchmarks folder (`$FASTCOT_BENCHMARKS_DIR`) whose one
script echoes its arguments and writes a JSON file, so they take milliseconds; one check runs
a real script's `--help` through `python -m fastcot`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastcot import cli_bench
from fastcot.cli import main

ROOT = Path(__file__).resolve().parents[1]

FAKE_SCRIPT = '''
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
if "--help" in args:
    print("usage: fake benchmark")
    sys.exit(0)
# As benchmarks/_common.py: --out-dir, else $FASTCOT_BENCH_OUT_DIR, else the source tree.
default = os.environ.get("FASTCOT_BENCH_OUT_DIR") or str(Path(__file__).parent / "results")
out = Path(args[args.index("--out-dir") + 1] if "--out-dir" in args else default) / "e2e__cpu__x.json"
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


def test_results_go_to_the_current_directory(fake_benchmarks, tmp_path, monkeypatch, capfd):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("FASTCOT_BENCH_OUT_DIR", raising=False)
    assert main(["bench", "e2e", "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["path"] == str(work / "e2e__cpu__x.json")
    assert not (fake_benchmarks / "results").exists()


def test_common_default_out_dir_follows_the_environment(monkeypatch, tmp_path):
    """The real scripts' default (benchmarks/_common.py): $FASTCOT_BENCH_OUT_DIR, else benchmarks/results."""
    def default_out_dir():
        spec = importlib.util.spec_from_file_location("bench_common_probe", ROOT / "benchmarks" / "_common.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module.DEFAULT_OUT_DIR

    monkeypatch.setenv("FASTCOT_BENCH_OUT_DIR", str(tmp_path))
    assert default_out_dir() == tmp_path
    monkeypatch.delenv("FASTCOT_BENCH_OUT_DIR")
    assert default_out_dir() == ROOT / "benchmarks" / "results"


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
