"""`fastcot bench static` (also `python -m fastcot.static`): the hot kernels' speed limits read
from their SASS for H100 (sm_90) and A100 (sm_80), without a GPU.

Every row is one kernel at one target shape on one arch, compiled exactly as its launcher would
launch it there with autotuning off. The predicted fraction of copy bandwidth is a MODEL, never a
measurement: docs/static_report.md states the model, its assumptions and how to read each column.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from fastcot.static import analyze, cubins, targets
from fastcot.static.model import MACHINES

SCHEMA_VERSION = 2  # 2: PDL fields (pdl, pdl_wait, pdl_loads_before_wait, pdl_overlap, predicted_bw_fraction_no_pdl)
NOTE = ("predicted_bw_fraction is the output of an explicit model (docs/static_report.md), "
        "not a measurement: nothing here ran on a GPU")


def build_rows(kernels=None, backends=("triton", "cuda"), archs=(90, 80), label_filter="", progress=None) -> list[dict]:
    """One row per (target, backend, arch); a kernel that cannot be built or read gives a row
    whose `error` says why."""
    chosen = [t for t in targets.targets() if (not kernels or t.kernel in kernels) and label_filter in t.label]
    if "cuda" in backends:
        sources = {"int4_matmul": "int4_gemv.cu", "paged_decode_attention": "paged_decode.cu"}
        cubins.prebuild([(sources[k], arch) for k in dict.fromkeys(t.kernel for t in chosen) for arch in archs])
    rows = []
    for target in chosen:
        for backend in backends:
            for arch in archs:
                machine = MACHINES[arch]
                try:
                    plan = targets.plan(target, backend, machine.sms, machine.arch)
                except Exception as exc:  # noqa: BLE001 - a launcher that cannot plan is a row, not the end
                    rows.append(analyze.error_row(target, backend, machine, f"the launcher on meta tensors: {exc!r}"))
                    continue
                try:
                    kernel = analyze.kernel_for(plan, arch)
                    row = analyze.analyze(plan, machine, kernel)
                    row["_listing"] = kernel.listing
                except cubins.Unavailable as why:
                    row = analyze.base_row(plan, machine)
                    row["error"] = str(why)
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def _config(row: dict) -> str:
    c = row["config"]
    if not c:
        return "-"
    if row["backend"] == "triton" and row["kernel"] == "int4_matmul":
        return f"m{c['block_m']} n{c['block_n']} k{c['block_k']} w{c['num_warps']} s{c['num_stages']} split{c['split_k']}"
    if row["backend"] == "triton":
        return f"n{c['block_n']} w{c['num_warps']} s{c['num_stages']} splits{c['splits']}"
    if row["kernel"] == "int4_matmul" and "warps" in c:  # the tensor-core kernel
        return f"mma mtile{c['m_tile']} rows{c['rows_per_block']} w{c['warps']}"
    if row["kernel"] == "int4_matmul":
        return f"mtile{c['m_tile']} vec{c['vec']} rows{c['rows_per_block']}"
    return f"g{c['group_tile']} tile{c['tile_tokens']} splits{c['splits']}"


def _bound(row: dict) -> str | None:
    """`memory`, `latency`, `issue`, or `issue:<pipe>` when a pipe limits the issue."""
    if row["bound"] is None or row["limiter"] in (row["bound"], "issue"):
        return row["bound"]
    return f"{row['bound']}:{row['limiter']}"


def _pdl(row: dict) -> str | None:
    """`early`: a PDL launch whose loads start before its wait (credited); `wait`: a PDL launch
    that loads nothing before it (not credited); `NONE`: a PDL launch of a kernel with no wait,
    which could read the previous kernel's output too early (a defect); `-`: an ordinary launch."""
    if not row["pdl"]:
        return None
    if not row["pdl_wait"]:
        return "NONE"
    return "early" if row["pdl_overlap"] else "wait"


COLUMNS = (
    ("kernel", 7, lambda r: "int4" if r["kernel"] == "int4_matmul" else "decode"),
    ("backend", 6, lambda r: r["backend"]), ("arch", 5, lambda r: r["arch"]),
    ("shape", 26, lambda r: r["label"]), ("config", 25, _config),
    ("regs", 4, lambda r: r["regs"]), ("smem", 6, lambda r: r["smem"]),
    ("blk/SM", 6, lambda r: r["blocks_per_sm"]), ("grid", 5, lambda r: r["grid"]),
    ("waves", 5, lambda r: r["waves"] and f"{r['waves']:.2f}"),
    ("eff", 4, lambda r: r["wave_efficiency"] and f"{r['wave_efficiency']:.2f}"),
    ("+L", 2, lambda r: r["extra_launches"]), ("loop", 5, lambda r: r["loop_instructions"]),
    ("B/iter", 6, lambda r: f"{r['bytes_per_iteration']:.0f}"),
    ("wi/B", 6, lambda r: r["instructions_per_byte"] and f"{r['instructions_per_byte']:.3f}"),
    ("ti/w", 5, lambda r: r["instructions_per_weight"]),
    ("KB/SM", 5, lambda r: r["bytes_in_flight_per_sm"] is not None and f"{r['bytes_in_flight_per_sm'] / 1024:.1f}"),
    ("it.cyc", 6, lambda r: r["iteration_cycles"]),
    ("bound", 8, lambda r: _bound(r)),
    ("pdl", 5, lambda r: _pdl(r)),
    ("noPDL%", 6, lambda r: r["predicted_bw_fraction_no_pdl"] is not None and r["pdl_overlap"]
     and f"{100 * r['predicted_bw_fraction_no_pdl']:.0f}"),
    ("model%", 6, lambda r: r["predicted_bw_fraction"] is not None and f"{100 * r['predicted_bw_fraction']:.0f}"),
)


def _cell(value) -> str:
    return "-" if value is None or value is False else str(value)


def format_table(rows: list[dict]) -> str:
    header = " ".join(f"{name:>{w}}" if i > 4 else f"{name:<{w}}" for i, (name, w, _) in enumerate(COLUMNS))
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["error"]:
            lead = " ".join(f"{_cell(get(r)):<{w}}" for name, w, get in COLUMNS[:5])
            lines.append(f"{lead} not available: {r['error']}")
            continue
        lines.append(" ".join(f"{_cell(get(r)):>{w}}" if i > 4 else f"{_cell(get(r)):<{w}}"
                              for i, (name, w, get) in enumerate(COLUMNS)))
    return "\n".join(lines)


def format_loops(rows: list[dict]) -> str:
    """The main loop of each distinct compiled kernel: size, streamed bytes and its mix."""
    seen, lines = set(), []
    for r in rows:
        key = (r["backend"], r["arch"], r["kernel_name"], r["loop_instructions"], r["loop_static_instructions"])
        if r["error"] or key in seen:
            continue
        seen.add(key)
        mix = ", ".join(f"{k} {v}" for k, v in r["loop_mix"].items())
        stages = f", {r['copy_stages']} copy stage(s)" if r["copy_stages"] else ""
        lines.append(f"{r['backend']:<6} {r['arch']} {r['label']:<26} {_config(r)}: {r['loop_instructions']} instr/iteration "
                     f"({r['loop_static_instructions']} in the loop body{stages}), {r['bytes_per_iteration']:.0f} B/iteration"
                     f"; loaded by SASS {r['loaded_bytes_per_iteration']} B\n    {mix}")
    return "\n".join(lines)


def format_assumptions(archs) -> str:
    lines = ["Model assumptions (a MODEL, not measurements; docs/static_report.md):"]
    for arch in archs:
        m = MACHINES[arch]
        pipes = ", ".join(f"{k} {v:g}" for k, v in m.pipe_rates.items())
        lines.append(f"  sm_{arch}: {m.name}: {m.sms} SMs at {m.clock_ghz} GHz, copy bandwidth {m.copy_bandwidth_gbs:g} GB/s, "
                     f"DRAM latency {m.dram_latency_ns:g} ns, L1 hit {m.l1_latency_cycles:g} cycles, issue {m.issue_rate:g} "
                     f"warp-instr/clk/SM, pipes ({pipes}) warp-instr/clk/SM, {m.launch_us:g} us per launch "
                     f"({m.pdl_launch_us:g} us for a PDL launch that streams before its wait), "
                     f"L2 {m.l2_bandwidth_gbs:g} GB/s for split partials")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=.]+", "_", text).strip("_")


def write_sass(rows: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if r["error"]:
            continue
        path = folder / f"{r['kernel']}__{r['backend']}__{r['arch']}__{_slug(r['label'])}.sass"
        head = [f"// {r['kernel']} {r['backend']} {r['arch']} {r['label']}: {_config(r)}",
                f"// {r['kernel_name']} from {r['origin']}; {r['regs']} registers, {r['smem']} B shared per block",
                f"// hot loop: {r['loop_instructions']} instructions per iteration "
                f"({r['loop_static_instructions']} in the body), {r['loop_iterations']} iterations per block"]
        path.write_text("\n".join(head) + "\n" + r["_listing"])
        r["sass_file"] = str(path)


def versions() -> dict:
    import triton

    import fastcot

    nvcc = cubins.find_nvcc()
    return {"fastcot": fastcot.__version__, "triton": triton.__version__,
            "nvcc": cubins.nvcc_version(nvcc) if nvcc else None,
            "cuobjdump": str(cubins.find_cuobjdump() or "") or None}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="fastcot bench static", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--sass-dir", type=Path, default=None, help="write each row's SASS listing into this folder")
    parser.add_argument("--arch", default="90,80", help="SM versions, comma-separated (default 90,80)")
    parser.add_argument("--backend", default="triton,cuda", help="backends, comma-separated (default triton,cuda)")
    parser.add_argument("--kernel", default="", help="int4_matmul and/or paged_decode_attention (default both)")
    parser.add_argument("--filter", default="", help="only shapes whose label contains this, e.g. 'M=1 ' or 'kv=fp8'")
    args = parser.parse_args(argv)
    args.archs = tuple(int(a) for a in args.arch.split(",") if a)
    if bad := [a for a in args.archs if a not in MACHINES]:
        parser.error(f"--arch: choose from {sorted(MACHINES)}, got {bad}")
    args.backends = tuple(b for b in args.backend.split(",") if b)
    if bad := [b for b in args.backends if b not in ("triton", "cuda")]:
        parser.error(f"--backend: choose from triton, cuda; got {bad}")
    args.kernels = tuple(k for k in args.kernel.split(",") if k)
    if bad := [k for k in args.kernels if k not in ("int4_matmul", "paged_decode_attention")]:
        parser.error(f"--kernel: choose from int4_matmul, paged_decode_attention; got {bad}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces @triton.jit kernels with Python ones, which cannot be compiled.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", "fastcot.static", *argv], env=env).returncode
    table_out = sys.stderr if args.json else sys.stdout
    start = time.time()
    rows = build_rows(args.kernels, args.backends, args.archs, args.filter,
                      progress=lambda r: print(f"  {r['backend']} {r['arch']} {r['label']}", file=sys.stderr, flush=True))
    if args.sass_dir:
        write_sass(rows, args.sass_dir)
    print(f"fastcot bench static: {len(rows)} rows in {time.time() - start:.0f} s. model% is a MODEL prediction of the "
          "fraction of copy bandwidth, not a measurement.\n", file=table_out)
    print(format_table(rows), file=table_out)
    print("\nMain loops (one line per compiled kernel; wi/B = warp-instructions per streamed byte, "
          "ti/w = thread-instructions per weight):", file=table_out)
    print(format_loops(rows), file=table_out)
    print("\n" + format_assumptions(args.archs), file=table_out)
    if args.json:
        doc = {"schema_version": SCHEMA_VERSION, "tool": "fastcot bench static", "note": NOTE, "versions": versions(),
               "machines": {f"sm_{a}": MACHINES[a].describe() for a in args.archs},
               "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}
        print(json.dumps(doc, indent=1))
    return 1 if any(r["error"] and not _expected_gap(r) for r in rows) else 0


def _expected_gap(row: dict) -> bool:
    """Rows that cannot exist: Triton 3.6 has no float8 e4m3 before sm_89."""
    return row["backend"] == "triton" and row["arch"] == "sm_80" and row["shape"].get("kv_dtype") == "fp8"
