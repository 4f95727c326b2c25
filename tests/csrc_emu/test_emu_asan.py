"""The emulator under AddressSanitizer, in child processes (libasan must be loaded first).

One pass of every csrc kernel case (emu_cases.py) with the ASan build must be clean: no read
or write outside a tensor, a shared-memory variable or a fiber's stack, no misaligned access.
And ASan must stop the self-test kernels that read past a tensor or write past a __shared__
array (the emulator poisons the gaps between shared variables).
"""

from __future__ import annotations

import json
import subprocess
import sys

import emu_cases
import pytest
from simt_emu import SELFTEST_DIR, build, build_selftests, emulator

pytestmark = pytest.mark.skipif(emulator.unavailable_reason() is not None,
                                reason=f"SIMT emulator unavailable: {emulator.unavailable_reason()}")


def run_child(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = build.asan_environment()
    env["SIMT_VARIANT"] = "asan"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def kernel_pass():
    emulator.build_fastcot("asan")  # built here, so a build error is reported as such
    return run_child([str(SELFTEST_DIR / "emu_cases.py"), "--order", "random"])


def test_every_kernel_case_is_clean_under_asan(kernel_pass):
    results = [json.loads(line) for line in kernel_pass.stdout.splitlines() if line.startswith("{")]
    assert kernel_pass.returncode == 0, f"exit {kernel_pass.returncode}:\n{kernel_pass.stderr[-6000:]}"
    assert [r["case"] for r in results] == list(emu_cases.CASES)
    failed = [f"{r['case']}: {r['detail']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert "ERROR: AddressSanitizer" not in kernel_pass.stderr


@pytest.fixture(scope="module")
def selftests():
    build_selftests("asan")
    return lambda scenario: run_child([str(SELFTEST_DIR / "asan_selftest.py"), scenario], timeout=300)


def test_correct_kernels_run_clean_under_asan(selftests):
    done = selftests("clean")
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr[-4000:]


@pytest.mark.parametrize("scenario, report, frame", [
    ("global-read", "heap-buffer-overflow", "read_past_end"),
    ("shared-write", "use-after-poison", "write_past_shared"),
])
def test_asan_stops_out_of_bounds_accesses(selftests, scenario, report, frame):
    done = selftests(scenario)
    assert done.returncode != 0 and "did not stop" not in done.stdout
    assert f"ERROR: AddressSanitizer: {report}" in done.stderr, done.stderr[-4000:]
    assert frame in done.stderr and "selftest_kernels.cu" in done.stderr
