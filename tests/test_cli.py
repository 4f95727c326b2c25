"""`fastcot info | generate | chat`: through `python -m fastcot` on the tiny-random preset (and
a tiny checkpoint directory), plus in-process checks of what needs no model loaded.

test_cli_chat.py holds the Ctrl-C and reply-printing checks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastcot.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
STATUS = re.compile(r"^\[(stop|length) \| ~\d+ tokens in \d+\.\d s, ~\d+\.\d tokens/s\]", re.M)


def run_cli(*args, input=None, env=None, cwd=None, timeout=180):
    """`python -m fastcot ARGS` importing this checkout; the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "fastcot", *args], input=input, capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=cwd, timeout=timeout)


# --- info ----------------------------------------------------------------------------------

def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("torch", "triton", "device", "pdl", "cuda_extension", "backends"):
        assert key in info
    import fastcot

    assert set(info["backends"]) == set(fastcot.ops.OPS)


def test_info_says_whether_pdl_is_on(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, env, expected in (((9, 0), None, "on (sm_90"), ((8, 0), None, "off: sm_80 (PDL needs sm_90"),
                                      ((9, 0), "0", "off: sm_90 (FASTCOT_PDL=0)")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda c=capability: c)
        if env is None:
            monkeypatch.delenv("FASTCOT_PDL", raising=False)
        else:
            monkeypatch.setenv("FASTCOT_PDL", env)
        from fastcot.cli import _pdl_status

        assert _pdl_status().startswith(expected)


def test_python_dash_m_info_text():
    proc = run_cli("info", env={"FASTCOT_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr
    assert "int4_matmul: torch" in proc.stdout and "cuda_extension" in proc.stdout


def test_info_reports_a_bad_backend_instead_of_crashing():
    proc = run_cli("info", env={"FASTCOT_BACKEND": "bogus"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"requested_backend +error: ValueError: FASTCOT_BACKEND must be one of .*got 'bogus'", proc.stdout)
    assert "int4_matmul: error: FASTCOT_BACKEND must be one of" in proc.stdout


def test_info_survives_any_failing_probe(capsys, monkeypatch):
    from fastcot import cli

    def broken():
        raise RuntimeError("triton is broken")

    monkeypatch.setattr(cli, "_triton_version", broken)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["triton"] == "error: RuntimeError: triton is broken" and info["torch"]


def test_info_reports_unusable_backend(capsys, monkeypatch):
    monkeypatch.setenv("FASTCOT_BACKEND", "cuda")
    main(["info", "--json"])
    info = json.loads(capsys.readouterr().out)
    if info["device"].startswith("cpu"):
        assert info["backends"]["int4_matmul"].startswith("error:")


# --- generate and chat through python -m fastcot -------------------------------------------

def test_generate_from_stdin_with_sampling_flags():
    proc = run_cli("generate", "--prompt-file", "-", "--n", "2", "--stop", "e", "--stop", "a", "--min-p", "0.05",
                   "--repetition-penalty", "1.1", "--max-tokens", "24", "--seed", "1", "--device", "cpu",
                   input="Once upon a time\n")
    assert proc.returncode == 0, proc.stderr
    assert "fastcot: temperature=0.6 top_p=0.95 min_p=0.05 repetition_penalty=1.1 max_tokens=24 n=2\n" in proc.stderr
    assert "[sample 0]" in proc.stderr and "[sample 1]" in proc.stderr
    assert re.search(r"^\[0: (stop|length), 1: (stop|length) \| ~\d+ tokens in", proc.stderr, re.M), proc.stderr
    assert "a" not in proc.stdout and "e" not in proc.stdout  # both stop strings reached the engine


def test_chat_with_system_and_prompt_file(tmp_path):
    question = tmp_path / "q.txt"
    question.write_text("first question\nspanning two lines\n")
    proc = run_cli("chat", "--system", "be brief", "--prompt-file", str(question), "--max-tokens", "4",
                   "--ignore-eos", "--temperature", "0", "--device", "cpu", input="and again\n\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    assert "empty line ends" in proc.stderr
    assert len(STATUS.findall(proc.stderr)) == 2  # two replies, each with its status line
    assert "fastcot: temperature=0.0 top_p=0.95 max_tokens=4 n=1\n" in proc.stderr


def test_chat_defaults_come_from_generation_config(tmp_path):
    """A checkpoint directory's generation_config.json sets what the flags leave unset."""
    import torch
    import transformers

    from fastcot.models.presets import preset_tokenizer

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=261,
                                      max_position_embeddings=64, bos_token_id=256, eos_token_id=257)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    preset_tokenizer("tiny-random").save_pretrained(str(tmp_path))
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.3, "top_k": 7, "max_new_tokens": 5, "eos_token_id": 257}))
    proc = run_cli("chat", "--model", str(tmp_path), "--device", "cpu", "--top-k", "3", "--ignore-eos",
                   input="hi\n\n")
    assert proc.returncode == 0, proc.stderr
    assert ("fastcot: temperature=0.3 top_k=3 max_tokens=5 n=1 "
            "(temperature, max_tokens from generation_config.json)\n") in proc.stderr
    assert re.search(r"^\[length \| ~\d+ tokens", proc.stderr, re.M)


def test_bad_value_is_one_line_and_status_2_before_loading():
    proc = run_cli("chat", "--temperature", "-1", input="hi\n\n", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "fastcot chat: error: SamplingParams.temperature must be >= 0, got -1.0 (--temperature)\n"
    assert proc.stdout == ""


# --- argument handling in-process (nothing is loaded: each fails first) ----------------------

@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], "SamplingParams.top_p must be in (0, 1], got 0.0 (--top-p)"),
    (["--n", "0"], "SamplingParams.n must be an int >= 1, got 0 (--n)"),
    (["--min-p", "2"], "SamplingParams.min_p must be in [0, 1], got 2.0 (--min-p)"),
    (["--stop", ""], "SamplingParams.stop must be a non-empty string or a list of them, got [''] (--stop)"),
    (["--max-tokens", "0"], "SamplingParams.max_tokens must be an int >= 1 (or None: up to max_model_len), got 0 (--max-tokens)"),
    (["--model", "meta-llama/Llama-3.1-8B"], "`huggingface-cli download meta-llama/Llama-3.1-8B --local-dir"),
    (["--model", "tiny-randomm"], "did you mean the preset 'tiny-random'?"),
    (["--thinking-budget", "4"], "--thinking-budget needs a reasoning model, but the tokenizer of 'tiny-random' has "
                                 "no known thinking delimiters; give them with --thinking-delimiters START END"),
])
def test_value_errors_are_one_line_with_status_2(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", "hi", *args]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("fastcot generate: error: ") and message in err
    assert err.count("\n") == 1 and out == ""


def test_prompt_file_errors(capsys, tmp_path, monkeypatch):
    assert main(["generate", "--prompt-file", str(tmp_path / "missing.txt")]) == 2
    assert "fastcot generate: error: --prompt-file: cannot read" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n \n")
    assert main(["generate", "--prompt-file", str(tmp_path / "empty.txt")]) == 2
    assert "holds no prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: exactly one of --prompt / --prompt-file
        main(["generate"])
    assert exc.value.code == 2


def test_sampling_flags_and_precedence():
    """Flags beat generation_config.json, which beats the reasoning defaults (used only when the
    checkpoint recommends no sampling at all); a flag of 0 counts."""
    import argparse

    from fastcot.cli_chat import add_arguments, sampling_kwargs

    p = argparse.ArgumentParser()
    add_arguments(p, chat=True)
    args = p.parse_args(["--temperature", "0", "--n", "3", "--stop", "x", "--stop", "yz", "--seed", "5",
                         "--presence-penalty", "0.5", "--min-thinking-tokens", "2"])
    checkpoint = {"temperature": 0.7, "top_k": 20, "repetition_penalty": 1.05}
    kwargs, from_checkpoint = sampling_kwargs(args, checkpoint)
    assert kwargs == dict(temperature=0.0, top_k=20, repetition_penalty=1.05, max_tokens=8192, n=3,
                          stop=["x", "yz"], seed=5, ignore_eos=False, thinking_budget=None, min_thinking_tokens=2,
                          presence_penalty=0.5)
    assert from_checkpoint == ["top_k", "repetition_penalty"]
    kwargs, from_checkpoint = sampling_kwargs(args, {"max_tokens": 100})
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["max_tokens"], from_checkpoint) == (0.0, 0.95, 100, ["max_tokens"])


def test_penalties_go_to_sampling_params_by_name(monkeypatch):
    """Passed under vLLM's names when SamplingParams has them; one clear line when it has not."""
    import fastcot
    from fastcot.cli_chat import UsageError, sampling_params

    class WithPenalties:
        def __init__(self, n=1, presence_penalty=0.0, frequency_penalty=0.0):
            self.n, self.presence_penalty, self.frequency_penalty = n, presence_penalty, frequency_penalty

    class WithoutPenalties:
        def __init__(self, n=1):
            self.n = n

    monkeypatch.setattr(fastcot, "SamplingParams", WithPenalties)
    params = sampling_params({"n": 2, "presence_penalty": 0.5, "frequency_penalty": -0.25})
    assert (params.n, params.presence_penalty, params.frequency_penalty) == (2, 0.5, -0.25)
    monkeypatch.setattr(fastcot, "SamplingParams", WithoutPenalties)
    with pytest.raises(UsageError, match="^--frequency-penalty: this fastcot's SamplingParams has no "
                                         "'frequency_penalty' parameter$"):
        sampling_params({"n": 1, "frequency_penalty": 0.1})
