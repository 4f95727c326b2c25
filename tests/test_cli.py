"""`fastcot info` / `python -m fastcot info`."""

import json
import os
import subprocess
import sys

from fastcot.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("torch", "triton", "device", "cuda_extension", "backends"):
        assert key in info
    import fastcot

    assert set(info["backends"]) == set(fastcot.ops.OPS)


def test_python_dash_m_info_text():
    env = {**os.environ, "FASTCOT_BACKEND": "torch"}
    out = subprocess.run(
        [sys.executable, "-m", "fastcot", "info"], capture_output=True, text=True, check=True, env=env, timeout=120
    ).stdout
    assert "int4_matmul: torch" in out
    assert "cuda_extension" in out


def test_info_reports_unusable_backend(capsys, monkeypatch):
    monkeypatch.setenv("FASTCOT_BACKEND", "cuda")
    main(["info", "--json"])
    info = json.loads(capsys.readouterr().out)
    if info["device"].startswith("cpu"):
        assert info["backends"]["int4_matmul"].startswith("error:")
