"""Helpers shared by every fastcot benchmark: environment record, copy bandwidth, timing,
L2 rotation, result files and plain-text tables.

Timing contract: each benchmark hands `time_fn` a callable `fn(i)` that runs one call on
rotation copy `i`; the copies (see `rotation_count`) total more than 2x L2, so every timed
call finds its operands evicted and no implementation is flattered by a warm cache.
"""

from __future__ import annotations

import csv
import datetime
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# `fastcot bench` sets FASTCOT_BENCH_OUT_DIR (to the current directory) so that results do
# not land in the source tree; a script run directly writes into benchmarks/results/.
DEFAULT_OUT_DIR = Path(os.environ.get("FASTCOT_BENCH_OUT_DIR") or REPO_ROOT / "benchmarks" / "results")
SCHEMA_VERSION = 1
CPU_LABEL = "CPU — numbers mean nothing for GPUs"


def import_fastcot():
    """Import fastcot, falling back to this checkout when it is not installed."""
    try:
        import fastcot
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        import fastcot
    return fastcot


# ---------------------------------------------------------------------------------------------
# Environment record


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_l2_bytes() -> int | None:
    size = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")
    try:
        text = size.read_text().strip().upper()
    except OSError:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def collect_env(device: torch.device) -> dict:
    """What a reader needs to trust or reproduce a number: device, versions, commit, date."""
    import triton

    commit = _git("rev-parse", "HEAD")
    # Untracked files (stray results, scratch) do not change what was measured.
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_runtime": torch.version.cuda,
        "git_commit": commit,
        "git_commit_short": commit[:7] if commit else None,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "device_type": device.type,
        "env_vars": {
            k: os.environ[k]
            for k in ("FASTCOT_BACKEND", "FASTCOT_PDL", "FASTCOT_AUTOTUNE", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        },
    }
    if device.type == "cuda":
        from fastcot.kernels.pdl import pdl_enabled

        props = torch.cuda.get_device_properties(device)
        env["pdl"] = pdl_enabled(props.major * 10 + props.minor)
        l2 = getattr(props, "L2_cache_size", None)
        env.update(
            device_name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            l2_bytes=l2 or 64 << 20,
            # The fallback errs high for A100/H100 (40/50 MB): more rotation copies, never fewer.
            l2_bytes_source="device properties" if l2 else "assumed 64 MiB",
            total_memory_bytes=props.total_memory,
        )
    else:
        l2 = _cpu_l2_bytes()
        env.update(
            device_name=_cpu_name(),
            sm_count=None,
            cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            l2_bytes=l2 or 1 << 20,
            l2_bytes_source="sysfs (per core)" if l2 else "assumed 1 MiB",
        )
    return env


def pick_device(requested: str | None, *, smoke: bool) -> torch.device:
    """The `--device` asked for, else the GPU unless a smoke run was asked for."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")


def start_run(device: torch.device, seed: int):
    """Common start of a kernel benchmark: one CPU thread (at tiny sizes intra-op thread
    wake-ups on a shared machine would be all a CPU table shows), the seed, fastcot, and the
    environment record with the measured copy bandwidth. Returns (fastcot, env)."""
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(seed)
    fastcot = import_fastcot()
    env = collect_env(device)
    env["fastcot_version"] = getattr(fastcot, "__version__", None)
    env["fastcot_path"] = str(Path(fastcot.__file__).parent) if getattr(fastcot, "__file__", None) else None
    env["copy_bandwidth"] = measure_copy_bandwidth(device)
    return fastcot, env


def device_slug(env: dict) -> str:
    if env["device_type"] != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")


def is_cpu(env: dict) -> bool:
    return env["device_type"] != "cuda"


# ---------------------------------------------------------------------------------------------
# Statistics and timing


@dataclass
class Timing:
    median_us: float
    p20_us: float
    p80_us: float
    samples: int
    method: str


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summarize(samples_us, method: str) -> Timing:
    return Timing(
        median_us=percentile(samples_us, 50),
        p20_us=percentile(samples_us, 20),
        p80_us=percentile(samples_us, 80),
        samples=len(samples_us),
        method=method,
    )


def _time_cpu(fn, n_copies: int, reps: int) -> Timing:
    fn(0)  # first call compiles / interprets once; keep it out of the samples
    samples = []
    for r in range(reps):
        t0 = time.perf_counter()
        fn(r % n_copies)
        samples.append((time.perf_counter() - t0) * 1e6)
    return _summarize(samples, "perf_counter")


def _eager_estimate_us(fn, n_copies: int) -> float:
    calls = max(n_copies, 3)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(calls):
        fn(i % n_copies)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def _hold_gpu(us: float = 50.0) -> None:
    """Keep the stream busy for ~`us` so the host can queue a whole sample before it starts."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is not None:
        sleep(int(us * 2000))  # cycles at ~2 GHz; being off by 2x only changes the head start


def _time_cuda_graph(fn, n_copies: int, reps: int, target_us: float = 1000.0) -> Timing:
    """Replay a CUDA graph of back-to-back calls cycling through the copies.

    Graphs remove launch gaps that would otherwise dominate a 5 µs decode kernel (and the
    engine runs decode under graphs too). Each sample is >= `target_us` of replays divided
    by the number of calls in them.
    """
    per_call = max(_eager_estimate_us(fn, n_copies), 0.5)
    rounds = max(1, math.ceil(target_us / (per_call * n_copies)))
    calls = n_copies * min(rounds, max(1, 512 // n_copies))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % n_copies)
    graph.replay()
    torch.cuda.synchronize()
    # The eager estimate includes host overhead; size the samples from a real replay.
    once = _time_replays(graph, 1)
    replays = max(1, math.ceil(target_us / max(once, 1.0)))
    samples = [_time_replays(graph, replays) / (replays * calls) for _ in range(reps)]
    del graph
    return _summarize(samples, f"cuda_graph(calls={calls}x{replays})")


def _time_replays(graph, replays: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _hold_gpu()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3


def _time_do_bench(fn, n_copies: int) -> Timing:
    import triton.testing

    counter = iter(range(1 << 62))
    # do_bench also clears L2 with a 256 MB memset before each call; the rotation still
    # matters because that memset leaves L2 full of dirty lines, not of our operands.
    med, p20, p80 = triton.testing.do_bench(
        lambda: fn(next(counter) % n_copies), warmup=10, rep=50, quantiles=[0.5, 0.2, 0.8]
    )
    return Timing(med * 1e3, p20 * 1e3, p80 * 1e3, samples=-1, method="do_bench")


def time_fn(fn, *, n_copies: int, device: torch.device, reps: int = 15, method: str = "graph") -> Timing:
    """Median and p20/p80 of one call of `fn(i)`, i cycling over `n_copies` rotation copies.

    CUDA: `method="graph"` (falls back to `do_bench` when `fn` cannot be captured) or
    `"do_bench"`. CPU: `time.perf_counter` over `reps` calls.
    """
    if device.type != "cuda":
        return _time_cpu(fn, n_copies, reps)
    for i in range(n_copies):  # warm-up: autotuning and compilation happen here, not in a graph
        fn(i)
    torch.cuda.synchronize()
    if method == "graph":
        try:
            return _time_cuda_graph(fn, n_copies, reps)
        except Exception as exc:  # noqa: BLE001 - any capture failure means "time it eagerly"
            torch.cuda.synchronize()
            timing = _time_do_bench(fn, n_copies)
            timing.method = f"do_bench (graph capture failed: {type(exc).__name__}: {exc})"[:200]
            return timing
    return _time_do_bench(fn, n_copies)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Device bandwidth and L2 rotation


def measure_copy_bandwidth(device: torch.device, *, nbytes: int | None = None, reps: int = 10) -> dict:
    """Achievable memory bandwidth: median of `dst.copy_(src)`, counting read + write bytes.

    This, not the spec sheet, is the 100% that every kernel's GB/s is compared with.
    """
    if device.type != "cuda":
        nbytes = nbytes or 64 << 20
        src = torch.empty(nbytes, dtype=torch.uint8).random_()
        dst = torch.empty_like(src)
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - t0)
        seconds = percentile(samples, 50)
        label = "CPU memcpy"
    else:
        nbytes = nbytes or 1 << 30  # >= 1 GiB: 20x an H100's L2, so this is HBM, not cache
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
        dst.copy_(src)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            dst.copy_(src)
            end.record()
        torch.cuda.synchronize()
        seconds = percentile([s.elapsed_time(e) / 1e3 for s, e in events], 50)
        label = "device-to-device copy"
    del src, dst
    free_memory()
    return {"gbps": 2 * nbytes / seconds / 1e9, "bytes_copied": nbytes, "method": label}


def rotation_count(bytes_per_copy: int, l2_bytes: int, *, max_total_bytes: int, max_copies: int = 256) -> int:
    """How many copies of the operands make their total exceed 2x L2 (at least 1).

    Capped by `max_total_bytes` and `max_copies`; a single copy of a big operand already
    exceeds 2x L2 on its own.
    """
    need = 2 * l2_bytes // max(bytes_per_copy, 1) + 1
    cap = max(1, max_total_bytes // max(bytes_per_copy, 1))
    return int(max(1, min(need, cap, max_copies)))


def rotation_budget_bytes(device: torch.device, cap_gib: float) -> int:
    """Memory allowed for rotation copies of one operand set: the cap, or a quarter of free memory."""
    cap = int(cap_gib * (1 << 30))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = min(cap, free // 4)
    return cap


def bandwidth_fields(*, nbytes: int, flops: int, median_us: float, copy_gbps: float) -> dict:
    gbps = nbytes / (median_us * 1e3)
    return {
        "bytes": nbytes,
        "gbps": gbps,
        "tflops": flops / (median_us * 1e6),
        "pct_copy_bw": 100.0 * gbps / copy_gbps,
    }


def timing_fields(timing: Timing) -> dict:
    fields = asdict(timing)
    return {
        "median_us": fields["median_us"],
        "p20_us": fields["p20_us"],
        "p80_us": fields["p80_us"],
        "timer": fields["method"],
    }


# ---------------------------------------------------------------------------------------------
# Results and tables


def results_path(out_dir: Path, family: str, env: dict) -> Path:
    """`<family>__<device>__<UTC date-time>__<commit>[-dirty].json`: one file per run."""
    stamp = env["date_utc"].replace("-", "").replace(":", "")[:15] + "Z"
    commit = env.get("git_commit_short") or "nogit"
    if env.get("git_dirty"):
        commit += "-dirty"
    return Path(out_dir) / f"{family}__{device_slug(env)}__{stamp}__{commit}.json"


def write_results(*, family: str, env: dict, rows: list[dict], out_dir: Path, extra: dict | None = None) -> Path:
    """Write `{schema_version, family, env, ..extra, rows}` as JSON plus the rows as CSV beside it."""
    path = results_path(out_dir, family, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "family": family, "env": env, **(extra or {}), "rows": rows}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(headers: list[str], rows: list[list[str]], *, groups: list[int] | None = None) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned.

    `groups` lists column indexes before which a `|` separator is drawn.
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    seps = set(groups or [])

    def line(cells):
        parts = []
        for i, (cell, width) in enumerate(zip(cells, widths)):
            if i in seps:
                parts.append("|")
            parts.append(cell.ljust(width) if i == 0 else cell.rjust(width))
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt(value, spec: str = ".1f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _time_cell(row) -> str:
    if row["status"] == "error":
        return "error"
    return fmt(row["median_us"], ".1f") + ("!" if row["status"] == "wrong" else "")


def _spread_cell(row) -> str:
    if row["median_us"] is None:
        return "n/a"
    return f"{50 * (row['p80_us'] - row['p20_us']) / row['median_us']:.0f}"


def format_results(rows: list[dict], *, group_by: tuple, lead: tuple, label, baselines: tuple, speedup_key: str) -> str:
    """Pivot benchmark rows into one line per `group_by` key with a column group per `impl`.

    Every implementation shows its median µs (`!` marks a wrong result); those not in
    `baselines` add ±% (half the p20-p80 spread), % of copy bandwidth and `speedup_key`.
    `label(row)` gives the leading cells, headed by `lead`.
    """
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    names = {r["impl"]: r["label"] for r in rows}
    lines: dict[tuple, dict] = {}
    for r in rows:
        lines.setdefault(tuple(r[k] for k in group_by), {})[r["impl"]] = r
    headers, groups = list(lead), []
    for impl in impls:
        groups.append(len(headers))
        headers.append(f"{names[impl]} µs")
        if impl not in baselines:
            headers += ["±%", "%bw", "x " + speedup_key.rsplit("_", 1)[-1]]
    table = []
    for by_impl in lines.values():
        cells = label(next(iter(by_impl.values())))
        for impl in impls:
            r = by_impl.get(impl)
            wide = impl not in baselines
            if r is None:
                cells += ["-"] * (4 if wide else 1)
                continue
            cells.append(_time_cell(r))
            if wide:
                cells += [_spread_cell(r), fmt(r["pct_copy_bw"], ".0f"), fmt(r[speedup_key], ".2f")]
        table.append(cells)
    return format_table(headers, table, groups=groups)


def print_env(env: dict) -> None:
    bw = env.get("copy_bandwidth", {})
    if is_cpu(env):
        print(f"*** {CPU_LABEL} ***")
    print(
        f"device: {env['device_name']}"
        + (f" (sm {env['compute_capability']}, {env['sm_count']} SMs)" if not is_cpu(env) else "")
        + f", L2 {env['l2_bytes'] / (1 << 20):.1f} MiB"
    )
    print(
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda_runtime']}, "
        f"commit {env['git_commit_short']}{' (dirty)' if env['git_dirty'] else ''}, {env['date_utc']}"
    )
    if bw:
        print(f"measured copy bandwidth: {bw['gbps']:.0f} GB/s ({bw['method']}, read+write)")
