"""Randomized differential test of every public op against `fastcot/kernels/reference.py`, on
every backend that can run here (torch; Triton, through the interpreter without a GPU; the csrc
kernels once an emulator backs them). The cases are in random_cases.py.

Cases run in worker processes (random_runner.py), so a crash fails its case and the run goes
on. Seeds are fixed, so CI is reproducible; `FASTCOT_RANDOM_SEED=<n>` draws another set and
`FASTCOT_RANDOM_CASES=<n>` runs n cases per op and backend. A failure names its case; rerun it
alone, with a full traceback, by

    python tests/ops/random_runner.py <backend>/<op>/<seed>
"""

import pytest
from random_runner import BACKENDS, OPS, case_seeds, run_isolated

PAIRS = [(backend, op) for backend in BACKENDS for op in OPS if op in BACKENDS[backend].ops]


def _cases(backend: str, op: str) -> list[str]:
    return [f"{backend}/{op}/{seed}" for seed in case_seeds(op)]


@pytest.fixture(scope="module")
def results(request):
    """The results of every selected (backend, op) pair's cases, from one run of workers."""
    cases = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is request.module and "op" in params and BACKENDS[params["backend"]].unavailable() is None:
            cases += _cases(params["backend"], params["op"])
    return run_isolated(cases)


@pytest.mark.parametrize("backend,op", PAIRS, ids=[f"{b}-{o}" for b, o in PAIRS])
def test_op_matches_reference(backend, op, results):
    reason = BACKENDS[backend].unavailable()
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    failures = [results[case] for case in _cases(backend, op) if results[case].status != "pass"]
    assert not failures, f"{len(failures)} of {len(_cases(backend, op))} cases failed:\n" + "\n".join(
        f"--- {r.case}: {r.status}\n{r.detail.strip()}" for r in failures)


def test_a_crash_or_hang_fails_its_case_and_the_run_goes_on():
    cases = ["selftest/crash/0", "selftest/pass/1", "selftest/hang/2", "selftest/fail/3", "selftest/pass/4"]
    results = run_isolated(cases, timeout_s=5)
    assert [results[c].status for c in cases] == ["crash", "pass", "timeout", "fail", "pass"]
    assert "SIGSEGV" in results[cases[0]].detail


def test_every_public_op_has_cases():
    import random_cases

    import fastcot

    assert set(OPS) == set(fastcot.ops.OPS) == set(random_cases.CASES)
