"""int4 weight-only matmul (W4A16) microbenchmark: fastcot vs cuBLAS fp16/bf16 vs torch tinygemm.

For every (layer shape, M) it times, side by side in one run: `F.linear` on the float weight
in fp16 and bf16 (cuBLAS), `fastcot.ops.int4_matmul` per backend (triton; cuda, the csrc GEMV, when fastcot._C
loaded and a GPU is present, for M <= 16 only), and `torch.ops.aten._weight_int4pack_mm` (bf16 only) on the same
quantized weight. Each int4 result is checked against the dequantized weight before it is
timed. Without a GPU (or with --smoke) it runs tiny shapes on CPU so the script cannot rot.

    python benchmarks/bench_int4_matmul.py                  # everything this device can do
    python benchmarks/bench_int4_matmul.py --quick          # GPU subset: target shapes, 4 Ms
    python benchmarks/bench_int4_matmul.py --models 8b --shapes down --m 1,16
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

FAMILY = "int4_matmul"
CUDA_GEMV_MAX_M = 16  # fastcot.kernels.cuda.INT4_GEMV_MAX_M: the csrc GEMV refuses larger M


@dataclass(frozen=True)
class Shape:
    model: str
    layer: str
    n: int  # out_features
    k: int  # in_features

    @property
    def name(self) -> str:
        return f"{self.model}.{self.layer}" if self.layer else self.model


MODEL_SHAPES = {
    "8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
           ("gate", 14336, 4096), ("down", 4096, 14336)],
    "70b": [("qkv", 10240, 8192), ("o", 8192, 8192), ("gate", 28672, 8192), ("down", 8192, 28672)],
}
GPU_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
QUICK_LAYERS = {"8b": ("o", "gate", "down")}
QUICK_MS = (1, 16, 64, 1024)
CPU_SHAPES = [Shape("tiny", "a", 256, 512), Shape("tiny", "b", 96, 384)]
CPU_MS = (1, 3, 17)

# The targets, on 8b.down (4096x14336) and 8b.gate (14336x4096) at group size 128:
# (label, which M, minimum speedup over cuBLAS, minimum % of copy bandwidth).
TARGET_SHAPES = ((4096, 14336), (14336, 4096))
TARGETS = [
    ("M=1", lambda m: m == 1, 3.0, 75.0),
    ("M=16", lambda m: m == 16, 2.5, None),
    ("M=64", lambda m: m == 64, 1.5, None),
    ("M>=1024", lambda m: m >= 1024, 0.9, None),
]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TINYGEMM_GROUPS = (32, 64, 128, 256)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="8b,70b", help="comma list of: 8b, 70b (default both)")
    p.add_argument("--shapes", default=None,
                   help="comma list of layer names (qkv,o,gate_up,gate,down) and/or NxK sizes, e.g. 4096x14336")
    p.add_argument("--m", default=None, help="comma list of M (tokens); default 1..4096 on GPU, 1,3,17 on CPU")
    p.add_argument("--group-size", type=int, default=128, help="int4 group size along K (default 128)")
    p.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="activation dtype on GPU (default fp16)")
    p.add_argument("--quick", action="store_true", help="GPU subset: 8b o/gate/down at M=1,16,64,1024")
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes even when a GPU is present")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available (cpu with --smoke)")
    p.add_argument("--reps", type=int, default=None, help="timed samples per measurement (default 15; 3 when interpreted)")
    p.add_argument("--timer", choices=("graph", "do_bench"), default="graph",
                   help="CUDA timing: replay a CUDA graph of rotated calls (default) or triton do_bench")
    p.add_argument("--max-rotation-gib", type=float, default=8.0,
                   help="memory cap for the L2-rotation copies of one implementation's operands")
    p.add_argument("--out-dir", type=Path, default=common.DEFAULT_OUT_DIR, help="where the JSON/CSV go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-model", action="store_true",
                   help="GPU: skip the static model's predicted %%bw printed next to the measured one (M = 1, 16)")
    return p.parse_args(argv)


def select_shapes(args, tiny: bool) -> list[Shape]:
    tokens = [t.strip() for t in args.shapes.split(",")] if args.shapes else []
    sizes = [t for t in tokens if "x" in t]
    custom = [Shape("custom", "", *map(int, t.split("x"))) for t in sizes]
    if tiny:
        return custom or CPU_SHAPES
    layers = set(tokens) - set(sizes)
    models = [m.strip() for m in args.models.split(",")]
    shapes = []
    for model in models:
        if model not in MODEL_SHAPES:
            raise SystemExit(f"--models: unknown model {model!r}; choose from {sorted(MODEL_SHAPES)}")
        for layer, n, k in MODEL_SHAPES[model]:
            wanted = (layer in layers or (n, k) in {tuple(map(int, s.split("x"))) for s in sizes}) if tokens \
                else (not args.quick or layer in QUICK_LAYERS.get(model, ()))
            if wanted:
                shapes.append(Shape(model, layer, n, k))
    known = {(s.n, s.k) for s in shapes}
    return shapes + [s for s in custom if (s.n, s.k) not in known]


# ---------------------------------------------------------------------------------------------
# Implementations


class Pool:
    """Lazily built rotation copies of one operand; `take(n)` returns the first n."""

    def __init__(self, make):
        self.make, self.items = make, []

    def take(self, n: int) -> list:
        while len(self.items) < n:
            self.items.append(self.make())
        return self.items[:n]


def probe_fastcot_backends(fastcot, device, act_dtype) -> dict:
    """Which fastcot backends can serve int4_matmul here: {backend: None (ok) or reason}."""
    if device.type == "cuda":
        candidates = ("triton", "cuda")
    else:
        candidates = ("torch", "triton", "cuda")
    w = fastcot.quantize_int4(torch.randn(64, 256, device=device, dtype=act_dtype), group_size=128)
    x = torch.randn(2, 256, device=device, dtype=act_dtype)
    status = {}
    for backend in candidates:
        if backend == "cuda" and device.type != "cuda":
            status[backend] = "needs a CUDA device"
        elif backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            status[backend] = "set TRITON_INTERPRET=1 before starting Python to run Triton on CPU"
        else:
            try:
                with fastcot.backend(backend):
                    fastcot.ops.int4_matmul(x, w)
                status[backend] = None
            except Exception as exc:  # noqa: BLE001 - the message is the report
                status[backend] = f"{type(exc).__name__}: {exc}"
    return status


def tinygemm_unavailable(device, group_size) -> str | None:
    """Why torch's `_weight_int4pack_mm` cannot run here, or None."""
    if device.type != "cuda":
        return "CUDA only here (the CPU variant is a different op with another layout)"
    missing = [op for op in ("_weight_int4pack_mm", "_convert_weight_to_int4pack") if not hasattr(torch.ops.aten, op)]
    if missing:
        return f"torch {torch.__version__} lacks aten::{', aten::'.join(missing)}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "needs sm80+"
    if group_size not in TINYGEMM_GROUPS:
        return f"group size {group_size} not in {TINYGEMM_GROUPS}"
    return None


def tinygemm_operands(qw):
    """An Int4Weight in tinygemm's terms: (uint8 `[N, K/2]` nibbles, bf16 scales_and_zeros `[G, N, 2]`).

    `_convert_weight_to_int4pack` wants element 2i in the HIGH nibble of byte i. tinygemm
    dequantizes `(q - 8) * scale + zero_f`; ours is `(q - zero) * scale`, so
    `zero_f = (8 - zero) * scale`.
    """
    from fastcot.kernels import reference

    if qw.perm is not None:
        raise ValueError("act-order (perm) weights have no tinygemm equivalent")
    q = reference.unpack_int4_rows(qw.qweight)
    q_uint8 = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()
    scales = qw.scales.float()
    zeros = torch.full_like(scales, 8.0) if qw.zeros is None else qw.zeros.float()
    scales_and_zeros = torch.stack([scales, (8.0 - zeros) * scales], dim=-1).to(torch.bfloat16).contiguous()
    return q_uint8, scales_and_zeros


# DESIGN.md's tolerances against an fp32 reference, relative to the output's magnitude.
DTYPE_RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def error_tolerance(err_torch: float, ref_absmax: float, dtype, factor: float = 2.0) -> float:
    """The project's rule: at most `factor` x torch's error in the same dtype.

    Floored at the dtype's tolerance x the output's magnitude: torch's own error can be
    near zero by luck (one rounding of an exact sum), and a layout bug errs by O(output) anyway.
    """
    return max(factor * err_torch, DTYPE_RTOL[dtype] * ref_absmax)


# ---------------------------------------------------------------------------------------------
# Measurement


class ShapeBench:
    """Everything built once per shape: float weight, quantized weight, rotation pools, references."""

    def __init__(self, shape: Shape, ctx):
        self.shape, self.ctx = shape, ctx
        fastcot, dev = ctx.fastcot, ctx.device
        self.w = (torch.randn(shape.n, shape.k, device=dev) * 0.02).to(ctx.act_dtype)
        self.qw0 = fastcot.quantize_int4(self.w, group_size=ctx.group_size)
        self.w32 = self.qw0.dequantize(torch.float32)
        self.pools = {
            "fp16": Pool(lambda: self.w.to(torch.float16, copy=True)),
            "bf16": Pool(lambda: self.w.to(torch.bfloat16, copy=True)),
            "int4": Pool(lambda: fastcot.quantize_int4(self.w, group_size=ctx.group_size)),
        }
        self.pools["int4"].items.append(self.qw0)
        self.tinygemm_reason = ctx.tinygemm_reason
        self.tinygemm_skip = None  # (status, reason) when this shape's conversion failed its check
        if self.tinygemm_reason is None:
            self._prepare_tinygemm()

    def _prepare_tinygemm(self):
        try:
            q_uint8, sz = tinygemm_operands(self.qw0)
            packed = torch.ops.aten._convert_weight_to_int4pack(q_uint8, 8)  # innerKTiles=8, as gpt-fast
            self.tinygemm_bytes = packed.nbytes + sz.nbytes
            self.pools["tinygemm"] = Pool(lambda: (packed.clone(), sz.clone()))
            self.pools["tinygemm"].items.append((packed, sz))
            x = torch.randn(8, self.shape.k, device=self.ctx.device).to(torch.bfloat16)
            y = torch.ops.aten._weight_int4pack_mm(x, packed, self.ctx.group_size, sz)
            err, tol = self.check(x, y, factor=4.0)  # bf16-rounded scales/zeros: allow more
            if not err <= tol:
                self.tinygemm_skip = ("wrong", f"mismatch vs dequantize(): max abs err {err:.3g} > tol {tol:.3g}")
        except Exception as exc:  # noqa: BLE001
            self.tinygemm_skip = ("error", f"{type(exc).__name__}: {exc}"[:300])
        if self.tinygemm_skip:
            self.tinygemm_reason = self.tinygemm_skip[1]

    def check(self, x, y, factor=2.0) -> tuple[float, float]:
        """Max abs error of `y` vs the fp32 dequantized matmul, and the tolerance for x's dtype."""
        ref = x.float() @ self.w32.t()
        err = (y.float() - ref).abs().max().item()
        err_torch = (F.linear(x, self.w32.to(x.dtype)).float() - ref).abs().max().item()
        return err, error_tolerance(err_torch, ref.abs().max().item(), x.dtype, factor)

    def impls(self, m: int):
        """(key, label, dtype, weight bytes, pool key, call(w, x), check?) for every runnable implementation."""
        ctx, qbytes = self.ctx, self.qw0.nbytes
        dense_bytes = 2 * self.shape.n * self.shape.k
        dense = "cuBLAS" if ctx.device.type == "cuda" else "torch"
        out = [
            ("linear_fp16", f"{dense} fp16", torch.float16, dense_bytes, "fp16", _linear, False),
            ("linear_bf16", f"{dense} bf16", torch.bfloat16, dense_bytes, "bf16", _linear, False),
        ]
        for backend, reason in ctx.backends.items():
            if backend == "cuda" and m > CUDA_GEMV_MAX_M:
                continue  # decode sizes only: larger M raises by design (triton serves it)
            if reason is None:
                out.append((f"fastcot_{backend}", f"fastcot {backend}", ctx.act_dtype, qbytes, "int4",
                            _fastcot_call(ctx.fastcot, backend), True))
        if self.tinygemm_reason is None:
            gs = ctx.group_size
            call = lambda w, x: torch.ops.aten._weight_int4pack_mm(x, w[0], gs, w[1])  # noqa: E731
            out.append(("torch_int4pack", "tinygemm bf16", torch.bfloat16, self.tinygemm_bytes, "tinygemm", call, False))
        return out

    def measure(self, m: int) -> list[dict]:
        ctx, shape = self.ctx, self.shape
        x0 = torch.randn(m, shape.k, device=ctx.device)
        x_pools = {}
        rows = []
        for key, label, dtype, w_bytes, pool, call, check in self.impls(m):
            elt = torch.finfo(dtype).bits // 8
            nbytes = w_bytes + elt * m * (shape.k + shape.n)
            row = ctx.base_row(shape, m) | {"impl": key, "label": label, "act_dtype": str(dtype).split(".")[-1]}
            try:
                n_copies = common.rotation_count(nbytes, ctx.env["l2_bytes"], max_total_bytes=ctx.rotation_budget)
                xs = x_pools.setdefault(dtype, Pool(lambda d=dtype: x0.to(d, copy=True))).take(n_copies)
                ws = self.pools[pool].take(n_copies)
                y = call(ws[0], xs[0])  # also the warm-up that triggers autotuning
                if tuple(y.shape) != (m, shape.n):
                    raise RuntimeError(f"output shape {list(y.shape)}, expected {[m, shape.n]}")
                if check:
                    row["max_abs_err"], row["tol"] = self.check(xs[0], y)
                    row["status"] = "ok" if row["max_abs_err"] <= row["tol"] else "wrong"
                del y
                timing = common.time_fn(lambda i: call(ws[i], xs[i]), n_copies=n_copies,
                                        device=ctx.device, reps=ctx.reps, method=ctx.timer)
                row |= {"status": row.get("status", "ok"), "n_copies": n_copies} | common.timing_fields(timing)
                row |= common.bandwidth_fields(nbytes=nbytes, flops=2 * m * shape.n * shape.k,
                                               median_us=timing.median_us, copy_gbps=ctx.copy_gbps)
            except Exception as exc:  # noqa: BLE001 - one broken implementation must not end the run
                row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
                common.free_memory()
            rows.append(ctx.complete(row))
        if self.tinygemm_skip:  # recorded, not timed: a wrong kernel's speed means nothing
            status, reason = self.tinygemm_skip
            rows.append(ctx.complete(ctx.base_row(shape, m) | {
                "impl": "torch_int4pack", "label": "tinygemm bf16", "act_dtype": "bfloat16",
                "status": status, "reason": reason}))
        add_speedups(rows)
        return rows


def _row_label(r) -> list[str]:
    name = Shape(r["model"], r["layer"], r["n"], r["k"]).name
    return [f"{name} {r['n']}x{r['k']}", str(r["m"])]


def _linear(w, x):
    return F.linear(x, w)


def _fastcot_call(fastcot, backend):
    def call(w, x):
        with fastcot.backend(backend):
            return fastcot.ops.int4_matmul(x, w)
    return call


ROW_KEYS = ("model", "layer", "n", "k", "m", "group_size", "impl", "label", "act_dtype", "status", "reason",
            "median_us", "p20_us", "p80_us", "timer", "n_copies", "bytes", "gbps", "tflops", "pct_copy_bw",
            "max_abs_err", "tol", "speedup_vs_fp16", "speedup_vs_bf16", "model_pct_copy_bw", "model_note")


def add_speedups(rows: list[dict]) -> None:
    base = {r["impl"]: r["median_us"] for r in rows if r["status"] == "ok"}
    for r in rows:
        for dt in ("fp16", "bf16"):
            ref = base.get(f"linear_{dt}")
            if ref and r["median_us"]:
                r[f"speedup_vs_{dt}"] = ref / r["median_us"]


class Context:
    def __init__(self, args, fastcot, device, env):
        self.fastcot, self.device, self.env = fastcot, device, env
        self.group_size = args.group_size
        self.act_dtype = torch.float32 if device.type == "cpu" else DTYPES[args.dtype]
        self.backends = probe_fastcot_backends(fastcot, device, self.act_dtype)
        self.tinygemm_reason = tinygemm_unavailable(device, args.group_size)
        interpreted = os.environ.get("TRITON_INTERPRET") == "1" and self.backends.get("triton") is None
        self.reps = args.reps or (3 if interpreted and device.type == "cpu" else 15)
        self.timer = args.timer
        self.copy_gbps = env["copy_bandwidth"]["gbps"]
        self.rotation_budget = common.rotation_budget_bytes(device, args.max_rotation_gib)

    def base_row(self, shape, m) -> dict:
        return {"model": shape.model, "layer": shape.layer, "n": shape.n, "k": shape.k, "m": m,
                "group_size": self.group_size}

    @staticmethod
    def complete(row: dict) -> dict:
        return {key: row.get(key) for key in ROW_KEYS}


# ---------------------------------------------------------------------------------------------
# Report


def model_comparison(rows: list[dict], env: dict, device) -> str:
    """`fastcot bench static`'s predicted %bw (a model) next to the measured one, for M = 1 and
    16 (the static report's decode sizes), on this GPU's SM count and measured copy bandwidth."""
    from fastcot.static import compare

    names = {"float16": "fp16", "bfloat16": "bf16"}

    def shape_of(r):
        if r["m"] not in (1, 16) or r["act_dtype"] not in names:
            return None
        return {"m": r["m"], "n": r["n"], "k": r["k"], "group_size": r["group_size"], "dtype": names[r["act_dtype"]]}

    why = compare.add_predictions(rows, kernel="int4_matmul", shape_of=shape_of,
                                  props=torch.cuda.get_device_properties(device), copy_gbps=env["copy_bandwidth"]["gbps"])
    return f"model: n/a ({why})" if why else compare.format_comparison(rows, label=lambda r: " M=".join(_row_label(r)))


def judge_targets(rows: list[dict], *, base: str, group_size: int) -> list[dict]:
    """The issue's targets, judged on the fastest verified fastcot backend of each row."""
    results = []
    for label, pick_m, min_speedup, min_bw in TARGETS:
        for n, k in TARGET_SHAPES:
            ms = sorted({r["m"] for r in rows if (r["n"], r["k"]) == (n, k) and pick_m(r["m"])})
            for m in ms or [None]:
                res = {"target": label, "n": n, "k": k, "m": m, "min_speedup": min_speedup,
                       "min_pct_copy_bw": min_bw, "speedup": None, "pct_copy_bw": None, "impl": None}
                int4 = [r for r in rows if (r["n"], r["k"], r["m"]) == (n, k, m) and r["impl"].startswith("fastcot_")]
                ok = [r for r in int4 if r["status"] == "ok" and r[f"speedup_vs_{base}"]]
                if group_size != 128:
                    res["status"], res["why"] = "n/a", "targets are defined at group size 128"
                elif not ok:
                    res["status"] = "FAIL" if int4 else "n/a"
                    res["why"] = "no verified fastcot result" if int4 else "not run"
                else:
                    best = max(ok, key=lambda r: r[f"speedup_vs_{base}"])
                    res |= {"speedup": best[f"speedup_vs_{base}"], "pct_copy_bw": best["pct_copy_bw"], "impl": best["impl"]}
                    passed = res["speedup"] >= min_speedup and (min_bw is None or res["pct_copy_bw"] >= min_bw)
                    res["status"] = "PASS" if passed else "FAIL"
                results.append(res)
    return results


def format_targets(targets: list[dict], base: str) -> str:
    lines = [f"targets (fastest verified fastcot backend vs cuBLAS {base}):"]
    for t in targets:
        need = f">= {t['min_speedup']}x" + (f" and >= {t['min_pct_copy_bw']:.0f}% copy bw" if t["min_pct_copy_bw"] else "")
        m = t["target"] if t["m"] is None else f"M={t['m']}"
        got = (f"{t['speedup']:.2f}x, {t['pct_copy_bw']:.0f}% bw ({t['impl']})" if t["speedup"] is not None
               else t.get("why", ""))
        lines.append(f"  {t['status']:4}  {t['n']:>5}x{t['k']:<5}  {m:7}  need {need:36}  got {got}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device, smoke=args.smoke)
    tiny = device.type == "cpu" or args.smoke
    fastcot, env = common.start_run(device, args.seed)
    ms = [int(m) for m in args.m.split(",")] if args.m else list(CPU_MS if tiny else QUICK_MS if args.quick else GPU_MS)
    shapes = select_shapes(args, tiny)
    ctx = Context(args, fastcot, device, env)
    base = "fp16" if device.type == "cpu" else args.dtype

    common.print_env(env)
    availability = {"linear_fp16": None, "linear_bf16": None}
    availability |= {f"fastcot_{b}": reason for b, reason in ctx.backends.items()}
    availability["torch_int4pack"] = ctx.tinygemm_reason
    for impl, reason in availability.items():
        if reason is not None:
            print(f"{impl}: n/a ({reason})")

    rows = []
    for i, shape in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] {shape.name} {shape.n}x{shape.k} g{args.group_size} M={ms}",
              file=sys.stderr, flush=True)
        bench = ShapeBench(shape, ctx)
        if bench.tinygemm_skip:
            print(f"  torch_int4pack: not timed for {shape.name} ({bench.tinygemm_reason})", file=sys.stderr)
        for m in ms:
            rows += bench.measure(m)
        del bench
        common.free_memory()

    print()
    print(common.format_results(rows, group_by=("model", "layer", "n", "k", "m"), lead=("shape", "M"), label=_row_label,
                                baselines=("linear_fp16", "linear_bf16"), speedup_key=f"speedup_vs_{base}"))
    print("µs: median; ±%: half the p20-p80 spread; %bw: of measured copy bandwidth; "
          f"x {base}: speed-up over {'cuBLAS' if device.type == 'cuda' else 'torch'} {base}; !: wrong result")
    if device.type == "cuda" and not args.no_model:
        print("\n" + model_comparison(rows, env, device))
    failed = [r for r in rows if r["status"] in ("wrong", "error")]
    for r in failed:
        print(f"{r['status'].upper()}: {r['impl']} {r['n']}x{r['k']} M={r['m']}: "
              + (r["reason"] or f"max abs err {r['max_abs_err']:.3g} > tol {r['tol']:.3g}"))
    # Only fastcot's own failures fail the run; a peer that cannot run here is just reported.
    bad = [r for r in failed if r["impl"].startswith("fastcot_")]
    print()
    if tiny:
        targets = {"judged": False, "why": "tiny CPU/smoke run: " + common.CPU_LABEL}
        print(f"targets: not judged ({targets['why']})")
    else:
        results = judge_targets(rows, base=base, group_size=args.group_size)
        targets = {"judged": True, "baseline": f"linear_{base}", "results": results}
        print(format_targets(results, base))

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config |= {"run_ms": ms, "run_shapes": [vars(s) for s in shapes], "tiny": tiny}
    path = common.write_results(
        family=FAMILY, env=env, rows=rows, out_dir=args.out_dir,
        extra={"config": config, "implementations": availability, "targets": targets},
    )
    print(f"\nwrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
