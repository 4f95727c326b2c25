#!/usr/bin/env python3
"""Per-kernel resource usage of the built fastcot._C, without a GPU.

Two independent sources, cross-checked:
  * the ptxas log setup.py saves next to the extension (fastcot/_C.ptxas.log):
    registers, stack frame and spill stores/loads per kernel and arch;
  * `cuobjdump --dump-resource-usage` on the .so (the copy inside triton's NVIDIA
    backend works): REG, STACK, SHARED and LOCAL per kernel and arch.
A kernel with spills, stack or local memory is a problem, and so is an arch with
no kernels at all or without one of the kernel families csrc/ defines
(EXPECTED_KERNELS): the parsers refuse to report "clean" about output they did
not understand.

    python tools/csrc_report.py [--so fastcot/_C....so] [--log ...] [--archs 80;90a] [--json]

Exit status 1 when a problem is found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fastcot, which built the extension reported on

from fastcot.static.cuobjdump import KernelUsage, cuobjdump, find_cuobjdump, parse_resource_usage  # noqa: E402

__all__ = ["KernelUsage", "cuobjdump", "find_cuobjdump", "parse_resource_usage", "parse_ptxas_log", "problems",
           "missing_kernels", "merge", "main"]
DEFAULT_ARCHS = ("sm_80", "sm_90a")
# Every kernel family csrc/ defines (a substring of each instantiation's mangled name). Each
# must be built for every arch, so a kernel dropped from the build is reported, not skipped.
EXPECTED_KERNELS = (
    "int4_dequantize_kernel",
    "int4_gemv_kernel",
    "paged_decode_kernel",
    "paged_decode_merge_kernel",
)


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"^\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads\s*$")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(text: str) -> list[KernelUsage]:
    """Entry kernels from `ptxas -v` output; raises ValueError on a block it cannot complete."""
    kernels: list[KernelUsage] = []
    current: KernelUsage | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if entry := _ENTRY.search(line):
            if current is not None:
                raise ValueError(f"ptxas log: {current.name} ({current.arch}) has no 'Used N registers' line")
            current = KernelUsage(arch=entry.group(2), name=entry.group(1))
        elif props := _PROPERTIES.search(line):
            frame = _FRAME.match(lines[i + 1]) if i + 1 < len(lines) else None
            if frame is None:
                raise ValueError(f"ptxas log line {i + 2}: expected the stack/spill line after {line.strip()!r}")
            stack, stores, loads = (int(g) for g in frame.groups())
            if current is not None and props.group(1) == current.name:
                current.stack, current.spill_stores, current.spill_loads = stack, stores, loads
            elif stack or stores or loads:
                # A non-inlined device function spilling is still a spill.
                arch = current.arch if current is not None else "?"
                kernels.append(KernelUsage(arch, props.group(1), None, stack, None, None, stores, loads))
        elif (used := _USED.search(line)) and current is not None:
            if current.spill_stores is None:
                raise ValueError(f"ptxas log: {current.name} ({current.arch}) has no stack/spill line")
            current.registers = int(used.group(1))
            smem = _SMEM.search(line)
            current.shared = int(smem.group(1)) if smem else 0
            kernels.append(current)
            current = None
    if current is not None:
        raise ValueError(f"ptxas log: {current.name} ({current.arch}) is incomplete")
    return kernels


def problems(kernels: list[KernelUsage], archs: list[str], source: str) -> list[str]:
    """Everything that keeps a report from being clean: missing arches, spills, stack, local memory."""
    found = []
    for arch in archs:
        if not any(k.arch == arch for k in kernels):
            found.append(f"{source}: no kernels for {arch}")
    for k in kernels:
        for field in ("spill_stores", "spill_loads", "stack", "local"):
            value = getattr(k, field)
            if value:
                found.append(f"{source}: {k.arch} {k.name}: {field} = {value}")
    return found


def missing_kernels(kernels: list[KernelUsage], archs: list[str], source: str,
                    families: tuple[str, ...] = EXPECTED_KERNELS) -> list[str]:
    """Kernel families with no instantiation for an arch."""
    return [
        f"{source}: no {family} for {arch}"
        for arch in archs
        for family in families
        if not any(k.arch == arch and family in k.name for k in kernels)
    ]


def find_extension() -> Path | None:
    built = sorted((REPO / "fastcot").glob("_C.*.so"))
    return built[0] if built else None


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    done = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    pretty = done.stdout.splitlines()
    return dict(zip(names, pretty)) if len(pretty) == len(names) else {n: n for n in names}


def merge(ptxas: list[KernelUsage], dumped: list[KernelUsage]) -> list[KernelUsage]:
    """One row per (arch, kernel): registers/SHARED/LOCAL from cuobjdump, spills from ptxas."""
    rows = {(k.arch, k.name): dataclasses.replace(k) for k in dumped}
    for k in ptxas:
        row = rows.setdefault((k.arch, k.name), dataclasses.replace(k))
        row.spill_stores, row.spill_loads = k.spill_stores, k.spill_loads
        row.registers = row.registers if row.registers is not None else k.registers
        row.stack = row.stack if row.stack is not None else k.stack
    return sorted(rows.values(), key=lambda k: (k.arch, k.name))


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_table(rows: list[KernelUsage]) -> None:
    names = demangle([r.name for r in rows])
    header = f"{'arch':<8} {'REG':>4} {'STACK':>5} {'SHARED':>6} {'LOCAL':>5} {'SPILL_ST':>8} {'SPILL_LD':>8}  kernel"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.arch:<8} {_cell(r.registers):>4} {_cell(r.stack):>5} {_cell(r.shared):>6} {_cell(r.local):>5} "
            f"{_cell(r.spill_stores):>8} {_cell(r.spill_loads):>8}  {names[r.name]}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--so", type=Path, default=None, help="the extension (default: fastcot/_C.*.so in this repo)")
    parser.add_argument("--log", type=Path, default=None, help="the ptxas log (default: _C.ptxas.log beside --so)")
    parser.add_argument("--archs", default=";".join(DEFAULT_ARCHS), help="arches that must have kernels")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    so = args.so or find_extension()
    if so is None or not so.is_file():
        print("csrc_report: no built extension (fastcot/_C.*.so); build with FASTCOT_BUILD_CUDA=1 pip install -e .")
        return 1
    archs = [a if a.startswith("sm_") else f"sm_{a}" for a in re.split(r"[;,\s]+", args.archs.strip()) if a]
    log = args.log or so.parent / "_C.ptxas.log"
    ptxas = parse_ptxas_log(log.read_text())
    issues = problems(ptxas, archs, "ptxas log") + missing_kernels(ptxas, archs, "ptxas log")
    tool = find_cuobjdump()
    dumped: list[KernelUsage] = []
    if tool is None:
        issues.append("cuobjdump not found (neither triton's bundled copy nor a CUDA toolkit's)")
    else:
        dumped = parse_resource_usage(cuobjdump(tool, so, "--dump-resource-usage"))
        issues += problems(dumped, archs, "cuobjdump") + missing_kernels(dumped, archs, "cuobjdump")
    rows = merge(ptxas, dumped)
    if args.json:
        kernels = [dataclasses.asdict(r) for r in rows]
        print(json.dumps({"so": str(so), "kernels": kernels, "problems": issues}, indent=2))
    else:
        print(f"{so}\n(cuobjdump: {tool}; ptxas log: {log})\n")
        print_table(rows)
        verdict = "\n".join(f"PROBLEM: {p}" for p in issues) or "clean: no spills, stack or local memory"
        print("\n" + verdict)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
