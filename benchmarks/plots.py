"""PNG plots from benchmark JSON results (matplotlib, no display needed).

For each family it finds, the newest run (by `env.date_utc`; per model list for e2e, whose
8B and 70B runs are drawn side by side) among the given files/folders:

- `e2e_tokens_per_s.png`: batch-1 decode tokens/s vs context, one line per implementation and
  weight/KV configuration, each fastcot configuration's roofline (tokens/s at the copy
  bandwidth measured in that run) dashed in the same colour.
- `int4_matmul_pct_bw.png`: % of measured copy bandwidth vs M, one panel per weight shape.
- `paged_attention_pct_bw.png`: decode % of measured copy bandwidth vs context, one panel per batch.

    python benchmarks/plots.py                               # newest results in benchmarks/results/
    python benchmarks/plots.py gpu-report/ --out-dir gpu-report/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FILES = {"e2e": "e2e_tokens_per_s.png", "int4_matmul": "int4_matmul_pct_bw.png",
         "paged_attention": "paged_attention_pct_bw.png"}


def load_latest(paths) -> list[dict]:
    """The newest run (by `env.date_utc`) per family, device and model list among JSON files and
    folders of them; files that are not benchmark results are ignored."""
    latest: dict[tuple, dict] = {}
    for path in map(Path, paths):
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            try:
                doc = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict) or "family" not in doc or "rows" not in doc or "env" not in doc:
                continue
            doc.setdefault("path", str(file))
            models = (doc.get("config") or {}).get("run_plan", {}).get("models")
            key = (doc["family"], doc["env"].get("device_name"), tuple(models) if isinstance(models, list) else None)
            if key not in latest or doc["env"]["date_utc"] > latest[key]["env"]["date_utc"]:
                latest[key] = doc
    return sorted(latest.values(), key=lambda d: (d["family"], d["env"]["date_utc"]))


def by_family(docs: list[dict]) -> dict[str, dict]:
    """One document per family: the newest's header with the rows of all (e.g. 8B and 70B e2e runs)."""
    merged: dict[str, dict] = {}
    for doc in sorted(docs, key=lambda d: d["env"]["date_utc"], reverse=True):
        if doc["family"] in merged:
            merged[doc["family"]]["rows"] = merged[doc["family"]]["rows"] + doc["rows"]
        else:
            merged[doc["family"]] = dict(doc)
    return merged


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(f"plots need matplotlib ({exc}): pip install -e '.[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(doc: dict, what: str) -> str:
    env = doc["env"]
    device = "CPU (numbers mean nothing for GPUs)" if env["device_type"] != "cuda" else env["device_name"]
    commit = (env.get("git_commit_short") or "?") + ("-dirty" if env.get("git_dirty") else "")
    return f"{what}\n{device}, {env['date_utc'][:10]}, commit {commit}, torch {env['torch']}"


def _ok(rows, **match):
    return [r for r in rows if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def _ctx_ticks(ax, contexts) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(contexts))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{c // 1024}k" if c >= 1024 else str(c) for c in ticks])
    ax.minorticks_off()


def plot_e2e(doc: dict, out: Path, plt) -> Path | None:
    rows = [r for r in doc["rows"] if r["batch"] == 1 and r["status"] == "ok"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        configs = list(dict.fromkeys((r["impl"], r["weights"], r["kv_dtype"]) for r in mine))
        for i, (impl, weights, kv) in enumerate(configs):
            line = sorted((r for r in mine if (r["impl"], r["weights"], r["kv_dtype"]) == (impl, weights, kv)),
                          key=lambda r: r["context"])
            xs = [r["context"] for r in line]
            color = f"C{i % 10}"
            ax.plot(xs, [r["tokens_per_s"] for r in line], "o-", color=color, label=f"{impl} {weights} w, {kv} KV")
            if impl == "fastcot":
                ax.plot(xs, [r["roofline_tokens_per_s"] for r in line], "--", color=color, alpha=0.6,
                        label=f"roofline {weights} w, {kv} KV")
        _ctx_ticks(ax, [r["context"] for r in mine])
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens already in the KV cache)")
        ax.set_ylabel("decode tokens/s, batch 1")
        ax.set_title(f"{model}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(doc, "end-to-end decode; dashed: bytes per step at the measured copy bandwidth"), fontsize=9)
    return _save(fig, out / FILES["e2e"], plt)


def plot_int4(doc: dict, out: Path, plt) -> Path | None:
    rows = [r for r in doc["rows"] if r["status"] == "ok" and r["pct_copy_bw"] is not None]
    shapes = list(dict.fromkeys((r["model"], r["layer"], r["n"], r["k"]) for r in rows))
    if not shapes:
        return None
    cols = min(3, len(shapes))
    nrows = -(-len(shapes) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, (model, layer, n, k) in zip(axes.flat, shapes):
        mine = [r for r in rows if (r["model"], r["layer"], r["n"], r["k"]) == (model, layer, n, k)]
        for impl in dict.fromkeys(r["impl"] for r in mine):
            line = sorted((r for r in mine if r["impl"] == impl), key=lambda r: r["m"])
            ax.plot([r["m"] for r in line], [r["pct_copy_bw"] for r in line], "o-", label=line[0]["label"])
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model}.{layer} {n}x{k}" if layer else f"{n}x{k}", fontsize=9)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("% of copy bandwidth")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    fig.suptitle(_title(doc, "int4 matmul: achieved bandwidth vs M"), fontsize=9)
    return _save(fig, out / FILES["int4_matmul"], plt)


def plot_attention(doc: dict, out: Path, plt) -> Path | None:
    rows = [r for r in doc["rows"] if r["status"] == "ok" and r["section"] == "decode" and r["pct_copy_bw"] is not None]
    batches = sorted({r["batch"] for r in rows})
    if not batches:
        return None
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        mine = [r for r in rows if r["batch"] == batch]
        for key in dict.fromkeys((r["impl"], r["kv_dtype"], r["block_size"]) for r in mine):
            line = sorted((r for r in mine if (r["impl"], r["kv_dtype"], r["block_size"]) == key),
                          key=lambda r: r["context"])
            label = f"{line[0]['label']} {key[1]}" + (f" bs{key[2]}" if key[2] else "")
            ax.plot([r["context"] for r in line], [r["pct_copy_bw"] for r in line], "o-", label=label)
        _ctx_ticks(ax, [r["context"] for r in mine])
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.set_xlabel("context")
        ax.set_ylabel("% of copy bandwidth")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(_title(doc, "paged decode attention: achieved bandwidth vs context"), fontsize=9)
    return _save(fig, out / FILES["paged_attention"], plt)


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTTERS = {"e2e": plot_e2e, "int4_matmul": plot_int4, "paged_attention": plot_attention}


def make_plots(docs: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per family among `docs` that has a plotter and plottable rows."""
    plt = _pyplot()
    docs = by_family(docs)
    written = []
    for family, plot in PLOTTERS.items():
        if family in docs:
            path = plot(docs[family], Path(out_dir), plt)
            if path is not None:
                written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, default=[RESULTS], help="result JSON files or folders")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the PNGs go (default benchmarks/results)")
    args = p.parse_args(argv)
    docs = load_latest(args.paths)
    if not docs:
        print(f"no benchmark results in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    for path in make_plots(docs, args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
