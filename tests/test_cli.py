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


def test_generate_streams_text():
    out = subprocess.run(
        [sys.executable, "-m", "fastcot", "generate", "--prompt", "Once upon a time", "--max-tokens", "12",
         "--ignore-eos", "--device", "cpu"],
        capture_output=True, text=True, check=True, timeout=180,
    ).stdout
    assert len(out.strip("\n")) > 0


def test_chat_reads_turns_until_an_empty_line():
    proc = subprocess.run(
        [sys.executable, "-m", "fastcot", "chat", "--max-tokens", "4", "--device", "cpu", "--ignore-eos"],
        input="hello\nand again\n\n", capture_output=True, text=True, check=True, timeout=180,
    )
    assert "empty line ends" in proc.stderr
    assert proc.stdout.count("\n") >= 2  # one reply per turn
