"""`fastcot bench <name> [script options]`: run one of the repository's benchmark scripts.

The scripts live in the source tree's `benchmarks/` folder, not in the installed package (they
share `_common.py` and change with the kernels), so `fastcot bench` needs a checkout: it looks
for `benchmarks/` next to the `fastcot` package (an editable install or a source tree on
`PYTHONPATH`), or in `$FASTCOT_BENCHMARKS_DIR`. Every option after the name goes to the script
unchanged, except `--json`, which `fastcot bench` consumes: the script's table then goes to
stderr and the JSON results it wrote go to stdout. Results are written to the current
directory unless `--out-dir` says where (`$FASTCOT_BENCH_OUT_DIR`, which `fastcot bench` sets
to the current directory when unset, is the scripts' default; run directly, a script writes
into `benchmarks/results/`).

`fastcot bench static` is the exception: the static report lives in the package
(`fastcot.static`, no GPU and no checkout needed) and takes `--json` itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

# name -> (script, what it measures)
BENCHMARKS = {
    "kernels": ("bench_int4_matmul.py", "int4 weight-only matmul vs cuBLAS fp16/bf16 and torch tinygemm"),
    "attention": ("bench_paged_attention.py", "paged decode (and prefill) attention vs SDPA on a contiguous cache"),
    "e2e": ("bench_e2e.py", "whole-model decode tokens/s vs the roofline, plain PyTorch and HF generate"),
    "engine-overhead": ("bench_engine_overhead.py", "host time of one engine decode step around a no-math model"),
    "reasoning": ("bench_reasoning.py", "long chain-of-thought generation through the engine"),
    "static": ("fastcot.static", "speed limits of the hot kernels read from their SASS, no GPU: a model, not a measurement"),
    "serve": ("bench_serve.py", "concurrent streaming clients against fastcot serve: TTFT, ITL, tokens/s"),
}
# Benchmarks that are modules of the package rather than scripts of the checkout.
IN_PACKAGE = {"static": "fastcot.static.report"}
WROTE = re.compile(r"^wrote (\S+\.json)\s*$")


class BenchError(Exception):
    """A benchmark cannot be started; the message says why and what to do."""


def package_root() -> Path:
    """The folder holding the `fastcot` package this CLI runs from."""
    return Path(__file__).resolve().parent.parent


def benchmarks_dir() -> Path:
    override = os.environ.get("FASTCOT_BENCHMARKS_DIR")
    folder = Path(override) if override else package_root() / "benchmarks"
    if not (folder / "_common.py").is_file():
        where = f"$FASTCOT_BENCHMARKS_DIR={override}" if override else str(folder)
        raise BenchError(
            f"fastcot bench: no benchmark scripts at {where}. They live in the source tree's benchmarks/ folder, "
            "not in the installed package: install a checkout with `pip install -e .` (or put one on PYTHONPATH), "
            "or set FASTCOT_BENCHMARKS_DIR to a checkout's benchmarks/ folder."
        )
    return folder


def script_path(name: str) -> Path:
    if name not in BENCHMARKS:
        raise BenchError(f"fastcot bench: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    path = benchmarks_dir() / BENCHMARKS[name][0]
    if not path.is_file():
        raise BenchError(f"fastcot bench {name}: {path} does not exist in this checkout (that benchmark has not "
                         "been written yet, or this checkout predates it)")
    return path


def add_parser(sub) -> None:
    """`fastcot bench` and one sub-command per benchmark, for the `--help` listings (`main`
    hands `fastcot bench NAME ...` to `run` before argparse sees the script's options)."""
    bench = sub.add_parser(
        "bench", help="run a benchmark script: " + ", ".join(BENCHMARKS),
        description="Run one of the repository's benchmark scripts (from the source tree's benchmarks/ folder, "
                    "or $FASTCOT_BENCHMARKS_DIR). Options after NAME go to the script: `fastcot bench NAME --help` "
                    "shows them. `--json` prints the results as JSON on stdout and the table on stderr. Results "
                    "are saved in the current directory (or the script's --out-dir).",
    )
    names = bench.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, (script, desc) in BENCHMARKS.items():
        names.add_parser(name, help=f"{desc} ({script})", add_help=False)


def run(name: str, args: list[str]) -> int:
    """Run benchmark `name` with the script options `args`; returns its exit status."""
    if name in IN_PACKAGE:
        import importlib

        return importlib.import_module(IN_PACKAGE[name]).main(args)
    try:
        path = script_path(name)
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 2
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    if "-h" in args or "--help" in args:
        print(f"fastcot bench {name}: runs {path}; fastcot bench adds --json (results as JSON on stdout, "
              "the table on stderr). The script's options:\n", flush=True)
    env = dict(os.environ)
    # The scripts import the same fastcot as this command.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root()), env.get("PYTHONPATH")]))
    env.setdefault("FASTCOT_BENCH_OUT_DIR", os.getcwd())  # not the source tree's benchmarks/results/
    command = [sys.executable, str(path), *args]
    if not as_json:
        return subprocess.run(command, env=env, check=False).returncode
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    written = []
    for line in proc.stdout:
        sys.stderr.write(line)
        match = WROTE.match(line)
        if match:
            written.append(Path(match.group(1)))
    code = proc.wait()
    if not written:
        print(f"fastcot bench {name}: the script wrote no JSON (exit status {code})", file=sys.stderr)
        return code or 1
    docs = [json.loads(p.read_text()) | {"path": str(p)} for p in written]
    print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=1))
    return code
