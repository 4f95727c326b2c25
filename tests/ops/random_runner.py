"""Runs the randomized op cases (random_cases.py) in worker processes, one case at a time.

A case is `backend/op/seed`. The parent hands a worker the list of cases; the worker prints
`start` before each and its result after, flushing each line. If the worker dies (a
segmentation fault, heap corruption, a hang past the per-case timeout), the case it had started
is reported as crashed, with the exit signal and the end of its stderr, and a fresh worker
carries on from the next case. So a crash is one failed case, never the end of the run.

Run one case in this process, with its full traceback:

    python tests/ops/random_runner.py triton/paged_decode_attention/1234567
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
OPS = ("int4_matmul", "int4_dequantize", "write_kv_cache", "paged_decode_attention", "paged_prefill_attention",
       "cascade_decode_attention", "rms_norm", "rotary_embedding", "silu_and_mul")
# Cases per op and backend by default, sized so that the whole file takes about a minute on two
# CPU cores with Triton interpreted (prefill cases cost the most). FASTCOT_RANDOM_CASES=N runs N
# per op instead.
DEFAULT_CASES = {
    "int4_matmul": 40, "int4_dequantize": 24, "write_kv_cache": 32, "paged_decode_attention": 24,
    "paged_prefill_attention": 16, "cascade_decode_attention": 12, "rms_norm": 32, "rotary_embedding": 32, "silu_and_mul": 24,
}
CASE_TIMEOUT_S = float(os.environ.get("FASTCOT_RANDOM_CASE_TIMEOUT", "120"))


@dataclass(frozen=True)
class Backend:
    """One implementation the cases run against.

    `fastcot_backend` is the name handed to `fastcot.backend(...)` inside the worker; `ops` the
    ops it implements; `unavailable()` says why it cannot run here (None when it can). A new
    backend, such as a CPU emulator of the csrc kernels, is one more entry in `BACKENDS`."""

    name: str
    fastcot_backend: str
    ops: tuple[str, ...]
    unavailable: object  # () -> str | None


def _triton_unavailable() -> str | None:
    import torch

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return None
    return "Triton needs a GPU or TRITON_INTERPRET=1"


def _emulator_unavailable() -> str | None:
    # The csrc kernels run on the CPU through the SIMT emulator (tools/simt): the worker serves
    # the ops' cuda backend with the emulated extension (see _backend_context).
    from simt_emu import emulator

    return emulator.unavailable_reason()


CUDA_OPS = ("int4_matmul", "int4_dequantize", "paged_decode_attention")
BACKENDS = {
    "torch": Backend("torch", "torch", OPS, lambda: None),
    "triton": Backend("triton", "triton", OPS, _triton_unavailable),
    "csrc-emulator": Backend("csrc-emulator", "cuda", CUDA_OPS, _emulator_unavailable),
}


def case_seeds(op: str) -> list[int]:
    """The seeds of an op's cases: fixed by default, FASTCOT_RANDOM_SEED picks another set and
    FASTCOT_RANDOM_CASES their number. Backends share seeds, so they see the same inputs."""
    base = int(os.environ.get("FASTCOT_RANDOM_SEED", "0"))
    count = int(os.environ.get("FASTCOT_RANDOM_CASES", DEFAULT_CASES[op]))
    return [zlib.crc32(f"{base}/{op}/{i}".encode()) for i in range(count)]


@dataclass
class Result:
    case: str
    status: str  # pass | fail | error | crash | timeout
    detail: str = ""


def _worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(TESTS), env.get("PYTHONPATH")]))
    return env


def run_isolated(cases: list[str], timeout_s: float = CASE_TIMEOUT_S) -> dict[str, Result]:
    """Run `cases` in worker processes, restarting after a crash; one Result per case."""
    results: dict[str, Result] = {}
    pending = list(cases)
    while pending:
        started = _run_worker(pending, results, timeout_s)
        remaining = [c for c in pending if c not in results]
        if remaining and remaining[0] == pending[0] and not started:
            # The worker died before starting a case (e.g. an import error): report and stop.
            for case in remaining:
                results[case] = Result(case, "error", results.get("__worker__", Result("", "", "")).detail)
            break
        pending = remaining
    results.pop("__worker__", None)
    return results


def _run_worker(cases: list[str], results: dict, timeout_s: float) -> bool:
    """One worker over `cases` until it finishes or dies; True if it started any case."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=REPO, env=_worker_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        proc.stdin.write(json.dumps(cases))
        proc.stdin.close()
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        current, started, timed_out = None, False, False
        while True:
            try:
                # Imports take a while; each case then gets timeout_s.
                line = lines.get(timeout=timeout_s if current else max(timeout_s, 300))
            except queue.Empty:
                timed_out = True
                proc.kill()
                break
            if line is None:
                break
            try:
                message = json.loads(line)
            except ValueError:
                message = {}  # something else printed to stdout
            message = message if isinstance(message, dict) else {}
            if "start" in message:
                current, started = message["start"], True
            elif "case" in message:
                results[message["case"]] = Result(message["case"], message["status"], message.get("detail", ""))
                current = None
        proc.wait()
        stderr.seek(0)
        tail = stderr.read()[-3000:]
    if current is not None:
        if timed_out:
            results[current] = Result(current, "timeout", f"no result within {timeout_s:.0f} s\n{tail}")
        else:
            results[current] = Result(current, "crash", f"worker died: {_exit_text(proc.returncode)}\n{tail}")
    elif proc.returncode != 0:
        results["__worker__"] = Result("", "error", f"worker exited with {_exit_text(proc.returncode)}\n{tail}")
    return started


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


# --- worker side -----------------------------------------------------------------------------


def run_case(case: str) -> Result:
    """Run one case in this process."""
    import traceback

    if not case.startswith("selftest/"):
        import random_cases

    backend_name, op, seed = case.split("/")
    try:
        if backend_name == "selftest":
            _selftest(op)
        else:
            with _backend_context(backend_name):
                random_cases.run(op, int(seed), BACKENDS[backend_name].fastcot_backend)
    except AssertionError as e:
        return Result(case, "fail", str(e))
    except Exception:  # noqa: BLE001 - a case's error is its result
        return Result(case, "error", traceback.format_exc(limit=6))
    return Result(case, "pass")


def _backend_context(backend_name: str):
    """What a backend needs around its cases: the emulated csrc extension for csrc-emulator."""
    import contextlib

    if backend_name != "csrc-emulator":
        return contextlib.nullcontext()
    from simt_emu import emulator

    from fastcot.kernels import cuda

    return cuda.emulated(emulator.as_extension())


def _selftest(kind: str) -> None:
    """Cases that prove the isolation: `selftest/<crash|hang|fail|pass>/<n>`."""
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "hang":
        import time

        time.sleep(3600)
    elif kind == "fail":
        raise AssertionError("a failing case")


def _interpret_without_gpu() -> None:
    """As tests/conftest.py: Triton runs through its interpreter when there is no GPU."""
    import shutil

    if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
        os.environ["TRITON_INTERPRET"] = "1"


def _worker_main() -> None:
    _interpret_without_gpu()
    cases = json.loads(sys.stdin.read())
    for case in cases:
        print(json.dumps({"start": case}), flush=True)
        result = run_case(case)
        print(json.dumps({"case": case, "status": result.status, "detail": result.detail}), flush=True)


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(TESTS)]
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        _interpret_without_gpu()
        for arg in sys.argv[1:]:
            outcome = run_case(arg)
            print(f"{outcome.case}: {outcome.status}\n{outcome.detail}")
