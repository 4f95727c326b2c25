"""The model's prediction next to a benchmark's measurement, so the model can be calibrated.

The benchmarks call `predicted_fraction` on a GPU for their rows that match the static
report's targets: the same kernel, launch configuration and byte count, with the device's own
SM count and the copy bandwidth the benchmark measured in place of the model's assumptions.
"""

from __future__ import annotations

import dataclasses

from fastcot.static import analyze, cubins, targets
from fastcot.static.model import MACHINES, Machine


def device_machine(props, copy_gbps: float | None) -> tuple[Machine | None, str | None]:
    """The model's machine for a CUDA device (torch device properties), or None and why."""
    arch = props.major * 10 + props.minor
    if arch not in MACHINES:
        return None, f"no model for sm_{arch} (the model knows {', '.join(f'sm_{a}' for a in MACHINES)})"
    machine = dataclasses.replace(MACHINES[arch], name=props.name, sms=props.multi_processor_count)
    if copy_gbps:
        machine = dataclasses.replace(machine, copy_bandwidth_gbs=copy_gbps)
    return machine, None


_CACHE: dict = {}


def predicted_fraction(kernel: str, shape: dict, backend: str, machine: Machine) -> tuple[float | None, str | None]:
    """(predicted fraction of copy bandwidth, None) or (None, why not) for one call."""
    key = (kernel, tuple(sorted(shape.items())), backend, repr(machine))
    if key not in _CACHE:
        try:
            plan = targets.plan(targets.Target(kernel, dict(shape)), backend, machine.sms, machine.arch)
            row = analyze.analyze(plan, machine, analyze.kernel_for(plan, machine.arch))
            _CACHE[key] = (row["predicted_bw_fraction"], None)
        except (cubins.Unavailable, ValueError, TypeError, KeyError) as why:
            _CACHE[key] = (None, f"{type(why).__name__}: {why}")
    return _CACHE[key]


def add_predictions(rows: list[dict], *, kernel: str, shape_of, props, copy_gbps: float | None) -> str | None:
    """Sets `model_pct_copy_bw` on each measured fastcot row that `shape_of(row)` maps to a
    static-report shape (None skips the row). Returns why no row could be predicted, or None."""
    machine, why = device_machine(props, copy_gbps)
    if machine is None:
        return why
    for row in rows:
        backend = row["impl"].removeprefix("fastcot_") if row["impl"].startswith("fastcot_") else None
        shape = shape_of(row) if backend in ("triton", "cuda") and row["status"] == "ok" else None
        if shape is not None:
            fraction, row_why = predicted_fraction(kernel, shape, backend, machine)
            row["model_pct_copy_bw"] = None if fraction is None else 100 * fraction
            row["model_note"] = row_why
    return None


def format_comparison(rows: list[dict], label) -> str:
    """Measured %bw next to the model's prediction for the rows `add_predictions` annotated."""
    lines = ["measured vs model (model: fastcot bench static, a prediction from SASS; see docs/static_report.md)",
             f"{'shape':<40} {'impl':<15} {'measured %bw':>12} {'model %':>8}"]
    for r in rows:
        if r.get("model_pct_copy_bw") is None and r.get("model_note") is None:
            continue
        model = "-" if r["model_pct_copy_bw"] is None else f"{r['model_pct_copy_bw']:.0f}"
        measured = "-" if r["pct_copy_bw"] is None else f"{r['pct_copy_bw']:.0f}"
        lines.append(f"{label(r):<40} {r['impl']:<15} {measured:>12} {model:>8}"
                     + (f"  ({r['model_note']})" if r.get("model_note") else ""))
    return "\n".join(lines)
