"""The `make gpu-check` report: `report.md`, `report.json` and PNG plots from what the parts left in a folder.

Reads, all optional: `info.json` (`fastcot info --json`), `tests.xml` (pytest's junit XML),
`*.log`, and every benchmark result JSON (`<family>__<device>__<date>__<commit>.json`). Writes
`report.md` (a person's summary: device, versions, tests, each benchmark's targets and headline
rows), `report.json` (the same summary for programs) and the plots of `plots.py`, into the same
folder. Only what was measured appears; a part that left nothing is reported as missing.

    python benchmarks/report.py gpu-report/
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plots

EXPECTED = ("int4_matmul", "paged_attention", "e2e", "engine_overhead")
KI = 1024


def junit_summary(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable {path.name}: {exc}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return counts | {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                     "failed": failed}


def _ctx(n) -> str:
    return "-" if n is None else f"{n // KI}k" if n >= KI and n % KI == 0 else str(n)


def _num(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def headline_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """A compact table of a run's rows, by family."""
    family, rows = doc["family"], doc["rows"]
    if family == "e2e":
        head = ["model", "B", "context", "impl", "weights", "KV", "tokens/s", "% roofline", "roofline tok/s", "status"]
        body = [[r["model"], str(r["batch"]), _ctx(r["context"]), r["impl"], r["weights"], r["kv_dtype"],
                 _num(r["tokens_per_s"]), _num(r["pct_roofline"], ".0f"), _num(r["roofline_tokens_per_s"], ".0f"),
                 r["status"]] for r in rows]
    elif family == "int4_matmul":
        head = ["shape", "M", "impl", "µs", "% copy bw", "x F.linear fp16", "status"]
        body = [[f"{r['n']}x{r['k']}", str(r["m"]), r["impl"], _num(r["median_us"]), _num(r["pct_copy_bw"], ".0f"),
                 _num(r["speedup_vs_fp16"], ".2f"), r["status"]] for r in rows if r["impl"].startswith("fastcot")]
    elif family == "paged_attention":
        head = ["section", "B", "context", "block", "KV", "impl", "µs", "% copy bw", "x SDPA", "status"]
        body = [[r["section"], str(r["batch"]), _ctx(r["context"]), str(r["block_size"] or "-"), r["kv_dtype"],
                 r["impl"], _num(r["median_us"]), _num(r["pct_copy_bw"], ".0f"), _num(r["speedup_vs_sdpa"], ".2f"),
                 r["status"]] for r in rows]
    elif family == "engine_overhead":
        head = ["B", "generated", "step µs", "host µs", "status"]
        body = [[str(r["batch"]), _ctx(r["generated"]), _num(r["step_median_us"]), _num(r["host_median_us"]),
                 r["status"]] for r in rows]
    else:
        head = ["rows"]
        body = [[str(len(rows))]]
    return head, body


def target_lines(doc: dict) -> list[dict]:
    targets = doc.get("targets") or {}
    if not targets.get("judged"):
        return []
    out = []
    for t in targets.get("results", []):
        where = " ".join(f"{k}={_ctx(t[k]) if k == 'context' else t[k]}" for k in ("batch", "context", "m", "n", "k",
                                                                                    "block_size", "kv_dtype", "generated")
                         if t.get(k) is not None)
        value = t.get("value", t.get("speedup"))
        out.append({"family": doc["family"], "target": t["target"], "where": where,
                    "need": t.get("need") or f">= {t.get('min_speedup')}x", "value": value,
                    "status": t["status"], "why": t.get("why")})
    return out


def _md_table(head, body) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def build(folder: Path) -> dict:
    info_path = folder / "info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    docs = plots.load_latest([folder])
    summary = {
        "folder": str(folder), "info": info, "tests": junit_summary(folder / "tests.xml"),
        "logs": sorted(p.name for p in folder.glob("*.log")),
        "benchmarks": [{"family": d["family"], "file": Path(d["path"]).name, "env": d["env"],
                        "status_counts": _counts(d["rows"]), "targets": target_lines(d),
                        "skipped": d.get("skipped", [])} for d in docs],
        "missing": [f for f in EXPECTED if f not in {d["family"] for d in docs}],
    }
    try:
        summary["plots"] = [p.name for p in plots.make_plots(docs, folder)] if docs else []
    except SystemExit as exc:  # matplotlib missing: the report still gets written
        summary["plots"], summary["plots_error"] = [], str(exc)
    return summary | {"_docs": docs}


def _counts(rows) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def render(summary: dict) -> str:
    lines = ["# fastcot GPU check", ""]
    info = summary["info"]
    if info:
        lines += [f"- device: {info.get('device')}", (f"- torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), "
                  f"triton {info.get('triton')}, fastcot {info.get('fastcot')}"),
                  f"- CUDA extension: {info.get('cuda_extension')}"]
    else:
        lines.append("- no info.json (gpu-install did not run or failed: see install.log)")
    tests = summary["tests"]
    if tests is None:
        lines.append("- tests: no tests.xml (gpu-test did not run)")
    elif "error" in tests:
        lines.append(f"- tests: {tests['error']}")
    else:
        lines.append(f"- tests: {tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped")
        lines += [f"  - FAILED {name}" for name in tests["failed"][:30]]
    lines.append("")
    targets = [t for b in summary["benchmarks"] for t in b["targets"]]
    if targets:
        lines += ["## Targets", ""]
        lines += _md_table(["benchmark", "status", "target", "where", "need", "got"],
                           [[t["family"], t["status"], t["target"], t["where"], t["need"],
                             _num(t["value"], ".2f") if t["value"] is not None else (t["why"] or "-")]
                            for t in targets])
        lines.append("")
    for bench, doc in zip(summary["benchmarks"], summary["_docs"]):
        env = bench["env"]
        lines += [f"## {bench['family']}", "",
                  (f"`{bench['file']}`: {env['device_name']}, {env['date_utc']}, commit {env.get('git_commit_short')}"
                  f"{' (dirty)' if env.get('git_dirty') else ''}, copy bandwidth "
                  f"{env.get('copy_bandwidth', {}).get('gbps', 0):.0f} GB/s; rows {bench['status_counts']}"), ""]
        if env["device_type"] != "cuda":
            lines += ["**CPU run: numbers mean nothing for GPUs.**", ""]
        lines += _md_table(*headline_rows(doc))
        lines.append("")
        if bench["skipped"]:
            lines += [f"Skipped: {len(bench['skipped'])} (memory or time budget; listed in the JSON)", ""]
    if summary["missing"]:
        lines += [f"Missing (no result JSON; see the logs): {', '.join(summary['missing'])}", ""]
    if summary["plots"]:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in summary["plots"]] + [""]
    if summary.get("plots_error"):
        lines += [f"No plots: {summary['plots_error']}", ""]
    lines += ["Logs: " + (", ".join(summary["logs"]) or "none"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the folder gpu-check wrote into (OUT_DIR)")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} is not a folder")
    summary = build(args.folder)
    (args.folder / "report.md").write_text(render(summary))
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    (args.folder / "report.json").write_text(json.dumps(public, indent=1, default=str) + "\n")
    print(render(summary))
    print(f"wrote {args.folder / 'report.md'}, {args.folder / 'report.json'}"
          + "".join(f", {args.folder / p}" for p in summary["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
