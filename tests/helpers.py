"""Comparison helpers shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Tolerances versus a float64 reference (DESIGN.md §4).
TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
}


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer full of NaN, so an element the kernel never writes cannot pass."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def mismatch_report(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str | None:
    """None if `actual` matches `expected` within `atol + rtol * |expected|`, else a description
    of the worst element, the mismatch count and any NaN/inf."""
    if actual.shape != expected.shape:
        return f"shape {list(actual.shape)} != expected {list(expected.shape)}"
    a, e = actual.double(), expected.double()
    nonfinite = (~torch.isfinite(a)).sum().item()
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN counts as bad
    if not bad.any():
        return None
    worst = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err).argmax()
    idx = tuple(int(i) for i in torch.unravel_index(worst, a.shape))
    return (
        f"{int(bad.sum())}/{a.numel()} elements off (atol={atol}, rtol={rtol}); {nonfinite} non-finite; "
        f"worst at {idx}: got {a[idx].item():.6g}, expected {e[idx].item():.6g}"
    )


def assert_close(actual, expected, *, atol, rtol):
    report = mismatch_report(actual, expected, atol, rtol)
    assert report is None, report


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    err = (actual.double() - expected.double()).abs()
    assert torch.isfinite(err).all(), "non-finite values in the output"
    return err.max().item() if err.numel() else 0.0


# --- benchmark smoke runs --------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"


def import_benchmark(name: str):
    """Import `benchmarks/<name>.py` (and its `_common`) as a module."""
    import importlib

    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))


def run_benchmark(name: str, *args: str, timeout: float = 120, interpret: bool = False):
    """Run `benchmarks/<name>.py` in a subprocess; Triton is interpreted only when asked
    (it is slow), whatever the test process itself uses."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def load_test_module(relative_path: str):
    """A helper module of another test folder (no packages under tests/), loaded by its path
    relative to tests/ once and kept in sys.modules under its file name."""
    import importlib.util

    path = Path(__file__).resolve().parent / relative_path
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
