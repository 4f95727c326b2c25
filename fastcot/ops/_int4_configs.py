"""Launch configurations for the Triton int4 matmul, and the autotuner that picks among them.

Every configuration listed by `candidate_configs` is one we ship: the ahead-of-time compile
check builds each of them for sm_80 and sm_90 and rejects register spills. On a GPU the
first call for a new (M bucket, N, K, group size, dtype, flags) key times the candidates on
the real inputs and caches the winner for the process; inside CUDA-graph capture, under the
interpreter, or with `FASTCOT_AUTOTUNE=0` the heuristic first candidate is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Int4MatmulConfig:
    """A launch configuration. `dequant_then_matmul` selects the large-M strategy instead:
    dequantize the weight into a temporary buffer, then one cuBLAS matmul (block sizes are
    then those of the dequantization kernel)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2
    dequant_then_matmul: bool = False
    max_registers: int | None = None  # the launch's `maxnreg` (GEMV): pins the occupancy it was sized for


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two (decode sizes are tuned separately)."""
    return 1 if m <= 1 else 1 << (m - 1).bit_length()


H100_SMS = 132


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SMS  # Size the CPU/interpreter path as for an H100 so its code paths match.


def fit_block_k(block_k: int, k: int) -> int:
    """Shrink a tile's K extent for tiny K; it stays a power of two of at least 16."""
    while block_k > 16 and block_k // 2 >= k:
        block_k //= 2
    return block_k


def gemv_block_k(block_k: int, k: int, group_size: int) -> int:
    """A GEMV step is two half-steps of whole 32-nibble runs (a thread's 16-byte load), each
    inside one group (one scale per row)."""
    block_k = max(64, fit_block_k(block_k, k))
    return block_k if group_size == -1 else min(block_k, 2 * group_size)


# GEMV tiles (BLOCK_N, BLOCK_K, warps, register cap, programs per SM it allows on H100 (sm_90)
# and on A100 (sm_80)), best first. 512 x 128 with 4 warps: per half-step each thread streams
# 8 rows x 32 nibbles and reads the 32 activations of its run once for all 8.
# The register cap keeps three programs per SM: left alone, ptxas picks 168 or 240 registers
# depending on constants as small as the split count.
GEMV_TILES = ((256, 64, 2, 128, 8, 8), (512, 64, 2, 168, 6, 6), (1024, 64, 4, 168, 3, 3), (512, 128, 4, 168, 3, 3))


# Decode tensor-core tiles (BLOCK_N, BLOCK_K, warps, stages, programs per SM on H100 and on A100 at
# M <= 16, whose register cap keeps float16 and bfloat16 at the same occupancy), best first.
# Three stages keep two steps' loads in flight (about 64 KB per SM on H100); shared memory
# (25 KB) still allows the 4 programs per SM that the register cap sets.
DOT_TILES = ((128, 128, 4, 3, 4, 4), (64, 128, 4, 3, 4, 4))
DOT_REGISTERS = 128
# 32- and 64-row tiles: 8 warps (4 spill on sm_80), no cap.
WIDE_DOT_TILES = ((64, 128, 8, 2, 2, 2), (128, 128, 8, 2, 2, 2))


# The GEMV tile for short programs on H100 (same columns): 128 rows by 128-wide steps. Where its
# split leaves each program at most SHORT_STEPS steps of K it leads (4096x4096: one step, 32
# splits; 6144x4096: two, 16 splits): every program has its steps in flight almost at once, and
# the split is half the 64-wide tiles', so are the float32 partials written and read back. Longer
# programs keep the 64-wide tiles (fewer instructions per weight: about 3.3 against 3.45, the
# 128-wide steps moving the scales and run sums through shared memory), and so does A100, where
# bfloat16 4096x4096 would wait on latency with it (the static report's model).
SHORT_TILE = (128, 128, 2, 128, 8, 8)
SHORT_STEPS = 2


def short_config(n: int, k: int, group_size: int, sms: int) -> Int4MatmulConfig | None:
    """SHORT_TILE with its split where its programs run at most SHORT_STEPS steps, on H100; or None."""
    bn, bk, warps, regs, per_sm90, _ = SHORT_TILE
    if sms < H100_SMS or gemv_block_k(bk, k, group_size) != bk:
        return None
    split = gemv_split_count(triton_cdiv(n, bn), k, bk, group_size, per_sm90 * sms, sms)
    if triton_cdiv(triton_cdiv(k, bk), split) > SHORT_STEPS:
        return None
    return Int4MatmulConfig(1, bn, bk, split, 1, warps, 1, max_registers=regs)


def gemv_configs(n: int, k: int, group_size: int, sms: int) -> list[Int4MatmulConfig]:
    """M = 1: the short-program tile where it applies, then each tile with the split of K that
    best fills whole waves."""
    short = short_config(n, k, group_size, sms)
    out = [short] if short else []
    for bn, bk, warps, regs, per_sm90, per_sm80 in GEMV_TILES:
        per_sm = per_sm90 if sms >= H100_SMS else per_sm80
        bk = gemv_block_k(bk, k, group_size)
        split = gemv_split_count(triton_cdiv(n, bn), k, bk, group_size, per_sm * sms, sms)
        out.append(Int4MatmulConfig(1, bn, bk, split, 1, warps, 1, max_registers=regs))
    return out


def gemv_split_count(row_blocks: int, k: int, block_k: int, group_size: int, slots: int, sms: int) -> int:
    """Splits of K (whole BLOCK_K steps each) whose grid fills the resident slots best: at least
    half the slots, two steps or more per program, wave efficiency, the most resident programs
    (bytes in flight), then fewest splits."""
    units = triton_cdiv(k, block_k)
    best, best_score = 1, None
    for per_split in range(units, 0, -1):
        splits = triton_cdiv(units, per_split)
        grid = row_blocks * splits
        waves = grid / slots
        if waves <= 1:
            per_sm = triton_cdiv(grid, sms)
            eff = grid / (per_sm * sms)
        else:
            eff = waves / -(-grid // slots)
        # A grid that leaves most resident slots empty keeps too few bytes in flight, however
        # evenly it spreads: such grids rank below any that uses half the slots or more.
        fills = grid >= slots / 2 or per_split == 1
        # Two steps or more per program let the next step's loads overlap this step's math.
        overlaps = per_split >= 2 or units < 2
        score = (fills, overlaps, round(min(eff, 0.9), 2), round(min(grid / slots, 1.0), 1), -splits)
        if best_score is None or score > best_score:
            best, best_score = splits, score
    return best


def candidate_configs(m: int, n: int, k: int, group_size: int, sms: int) -> list[Int4MatmulConfig]:
    """Shipped configurations for this problem on a GPU with `sms` SMs, best guess first."""
    if m == 1:
        return gemv_configs(n, k, group_size, sms)
    if m <= 64:
        bm = max(16, m_bucket(m))
        out = []
        for bn, bk, warps, stages, per_sm90, per_sm80 in (DOT_TILES if bm == 16 else WIDE_DOT_TILES):
            bk = fit_block_k(bk, k)
            per_sm = per_sm90 if sms >= H100_SMS else per_sm80
            split = gemv_split_count(triton_cdiv(n, bn) * triton_cdiv(m, bm), k, bk, group_size, per_sm * sms, sms)
            # The split that fills the GPU first: it is what untuned runs (graph capture,
            # FASTCOT_AUTOTUNE=0) get.
            for s in dict.fromkeys((split, max(1, split // 2))):
                out.append(Int4MatmulConfig(bm, bn, bk, s, 1, warps, stages,
                                            max_registers=DOT_REGISTERS if bm == 16 else None))
        return out
    tiles = [(128, 128, 64, 8, 3), (128, 256, 32, 8, 3), (128, 64, 64, 4, 4), (64, 64, 128, 4, 3)]
    fused = [
        Int4MatmulConfig(bm, bn, fit_block_k(bk, k), 1, 8, warps, stages)
        for bm, bn, bk, warps, stages in tiles
    ]
    # For long prefills, rewriting the weight in 16 bits costs little next to the GEMM, and
    # cuBLAS may beat the fused tiles: let the autotuner decide.
    dequant = Int4MatmulConfig(1, 32, fit_block_k(128, k), num_warps=4, num_stages=1, dequant_then_matmul=True)
    return fused + ([dequant] if m >= 256 else [])


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Autotuner:
    """Per-process cache of the fastest configuration for each problem key."""

    def __init__(self):
        self.best: dict[tuple, Int4MatmulConfig] = {}

    def enabled(self, device: torch.device) -> bool:
        if device.type != "cuda" or os.environ.get("FASTCOT_AUTOTUNE", "1") == "0":
            return False
        return not torch.cuda.is_current_stream_capturing()

    def pick(self, key: tuple, candidates: list[Int4MatmulConfig], run, device: torch.device) -> Int4MatmulConfig:
        """Return the cached winner for `key`, timing `run(config)` for each candidate once."""
        if key in self.best:
            return self.best[key]
        if not self.enabled(device) or len(candidates) == 1:
            return candidates[0]
        from triton.runtime.errors import OutOfResources
        from triton.testing import do_bench

        timings = []
        for cfg in candidates:
            try:
                timings.append((do_bench(lambda: run(cfg), warmup=5, rep=20), cfg))
            except OutOfResources:  # e.g. too much shared memory for a smaller GPU
                continue
        if not timings:
            raise RuntimeError(f"no int4_matmul configuration could run for {key}")
        self.best[key] = min(timings, key=lambda t: t[0])[1]
        return self.best[key]


# Layer shapes (N, K) of the models we tune for: Llama-3-8B and Llama-3-70B.
TUNED_SHAPES = (
    (6144, 4096), (4096, 4096), (28672, 4096), (14336, 4096), (4096, 14336),
    (10240, 8192), (8192, 8192), (28672, 8192), (8192, 28672),
)
TUNED_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


def shipped_configs() -> list[Int4MatmulConfig]:
    """Every configuration the autotuner can pick for the tuned shapes, split-K folded to 1 or 2
    (only "split or not" changes the compiled code)."""
    seen = {}
    for n, k in TUNED_SHAPES:
        for m in TUNED_M:
            for cfg in candidate_configs(m, n, k, 128, H100_SMS):
                folded = Int4MatmulConfig(**{**cfg.__dict__, "split_k": min(cfg.split_k, 2)})
                seen.setdefault(folded, None)
    return list(seen)


def aot_specs():
    """Compile specs for the AOT check: every shipped configuration with the common flags
    (fp16, asymmetric g128), plus the other dtype, flag and group-size variants on one decode
    and one prefill configuration, plus the split-K reduction."""
    from fastcot.kernels.aot import ARCHS, KernelSpec
    from fastcot.kernels.triton.int4_matmul import (
        _int4_dequantize_kernel,
        _int4_matmul_kernel,
        _splitk_reduce_kernel,
    )

    def matmul_spec(cfg, dtype="fp16", group_size=128, zeros=True, perm=False, bias=False, mins=False, pdl=False):
        gs = 4096 if group_size == -1 else group_size
        tile_groups = cfg.block_k // gs if cfg.block_k > gs else 1
        split = cfg.split_k > 1
        name = (
            f"int4_matmul m{cfg.block_m} n{cfg.block_n} k{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"
            f"{' splitk' if split else ''} {dtype} g{group_size}{'' if zeros or mins else ' sym'}"
            f"{' perm' if perm else ''}{' bias' if bias else ''}{' mins' if mins else ''}{' pdl' if pdl else ''}"
        )
        return KernelSpec(
            name=name, fn=_int4_matmul_kernel, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            maxnreg=cfg.max_registers, archs=(90,) if pdl else ARCHS,
            signature={
                "x_ptr": f"*{dtype}", "qweight_ptr": "*i32", "scales_ptr": f"*{dtype}",
                "zeros_ptr": f"*{dtype}", "perm_ptr": "*i32", "bias_ptr": f"*{dtype}",
                "out_ptr": f"*{dtype}", "partial_ptr": "*fp32", "lock_ptr": "*i32",
                "M": "i32", "N": "i32", "K": "i32", "words_per_row": "i32",
                "stride_xm": "i32", "stride_om": "i32", "k_per_split": "i32",
            },
            constexprs={
                "GROUP_SIZE": gs, "TILE_GROUPS": tile_groups, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                "BLOCK_K": cfg.block_k, "SPLIT_K": cfg.split_k, "GROUP_M": cfg.group_m,
                "HAS_ZEROS": zeros or mins, "HAS_PERM": perm, "HAS_BIAS": bias, "IEEE_FP32": False,
                "DEQUANT_NATIVE": cfg.block_m > 1 and not mins, "HAS_MINS": mins,
                # The launcher's rule for 16-bit x (decode tiles only: prefill tiles keep the
                # dequantize-then-dot path, which fits their registers on sm_80).
                "BIASED_DOT": cfg.block_m <= 64 and tile_groups == 1 and not mins,
                "FUSED_REDUCE": split and cfg.block_m == 16, "USE_PDL": pdl,
            },
            aligned=("x_ptr", "qweight_ptr", "scales_ptr", "zeros_ptr", "perm_ptr", "bias_ptr", "out_ptr",
                     "partial_ptr", "lock_ptr", "N", "K", "words_per_row", "stride_xm", "stride_om", "k_per_split"),
        )

    def gemv_spec(cfg, dtype="fp16", group_size=128, zeros=True, perm=False, bias=False, mins=False, pdl=False):
        from fastcot.kernels.triton.int4_gemv import _int4_gemv_kernel

        gs = 4096 if group_size == -1 else group_size
        cfg = Int4MatmulConfig(**{**cfg.__dict__, "block_k": min(cfg.block_k, 2 * gs)})  # half-steps inside a group
        split = cfg.split_k > 1
        x_pairs = dtype in ("fp16", "bf16") and not perm  # what the launcher passes for bfloat16 x
        name = (
            f"int4_gemv n{cfg.block_n} k{cfg.block_k} w{cfg.num_warps}{' splitk' if split else ''} {dtype} "
            f"g{group_size}{'' if zeros or mins else ' sym'}{' perm' if perm else ''}{' bias' if bias else ''}"
            f"{' mins' if mins else ''}{' pdl' if pdl else ''}"
        )
        return KernelSpec(
            name=name, fn=_int4_gemv_kernel, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            maxnreg=cfg.max_registers, archs=(90,) if pdl else ARCHS,
            signature={
                "x_ptr": "*i32" if x_pairs else f"*{dtype}", "qweight_ptr": "*i32", "scales_ptr": f"*{dtype}",
                "zeros_ptr": f"*{dtype}", "perm_ptr": "*i32", "bias_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
                "partial_ptr": "*fp32", "lock_ptr": "*i32",
                "N": "i32", "K": "i32", "words_per_row": "i32", "k_per_split": "i32",
            },
            constexprs={
                "GROUP_SIZE": gs, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "SPLIT_K": cfg.split_k,
                "EVEN_K": True, "HAS_ZEROS": zeros or mins, "HAS_PERM": perm, "HAS_BIAS": bias, "HAS_MINS": mins,
                "X_PAIRS": x_pairs, "USE_PDL": pdl,
            },
            aligned=("x_ptr", "qweight_ptr", "scales_ptr", "zeros_ptr", "perm_ptr", "bias_ptr", "out_ptr",
                     "partial_ptr", "lock_ptr", "N", "K", "words_per_row", "k_per_split"),
        )

    configs = [c for c in shipped_configs() if not c.dequant_then_matmul]
    specs = [(gemv_spec if cfg.block_m == 1 else matmul_spec)(cfg) for cfg in configs]
    # sm_90 launches them with programmatic dependent launch (fastcot.kernels.pdl).
    specs += [(gemv_spec if cfg.block_m == 1 else matmul_spec)(cfg, pdl=True) for cfg in configs]
    decode = next(c for c in configs if c.block_m == 1 and c.split_k > 1)
    prefill = next(c for c in configs if c.block_m >= 64)
    for cfg in (decode, prefill):
        make = gemv_spec if cfg.block_m == 1 else matmul_spec
        specs += [
            make(cfg, dtype="bf16"),
            make(cfg, zeros=False, perm=True, bias=True),
            make(cfg, group_size=32),
            make(cfg, group_size=-1),
            make(cfg, group_size=32, zeros=False, mins=True),  # GGUF Q4_1
        ]
    specs.append(gemv_spec(Int4MatmulConfig(**{**decode.__dict__, "split_k": 1}), bias=True))
    rows16 = next(c for c in configs if c.block_m == 16)
    specs += [gemv_spec(decode, dtype="bf16", pdl=True), gemv_spec(decode, group_size=32, zeros=False, mins=True, pdl=True),
              gemv_spec(decode, zeros=False, perm=True, bias=True, pdl=True), matmul_spec(rows16, dtype="bf16", pdl=True)]
    for dtype, zeros, perm, mins in (("fp16", True, False, False), ("bf16", False, True, False),
                                     ("fp16", False, False, True)):
        cfg = next(c for c in shipped_configs() if c.dequant_then_matmul)
        specs.append(KernelSpec(
            name=(f"int4_dequantize n{cfg.block_n} k{cfg.block_k} {dtype}{'' if zeros or mins else ' sym'}"
                  f"{' perm' if perm else ''}{' mins' if mins else ''}"),
            fn=_int4_dequantize_kernel, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            signature={"qweight_ptr": "*i32", "scales_ptr": f"*{dtype}", "zeros_ptr": f"*{dtype}",
                       "perm_ptr": "*i32", "out_ptr": f"*{dtype}", "N": "i32", "K": "i32"},
            constexprs={"GROUP_SIZE": 128, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                        "HAS_ZEROS": zeros or mins, "HAS_PERM": perm, "HAS_MINS": mins},
            aligned=("qweight_ptr", "scales_ptr", "zeros_ptr", "perm_ptr", "out_ptr", "N", "K"),
        ))
    for split in sorted({c.split_k for n, k in TUNED_SHAPES for m in TUNED_M for c in candidate_configs(m, n, k, 128, H100_SMS)
                         if c.block_m > 16} - {1}):  # the GEMV and 16-row tiles reduce in-kernel
        specs.append(KernelSpec(
            name=f"splitk_reduce split{split} fp16", fn=_splitk_reduce_kernel, num_warps=4, num_stages=1,
            signature={"partial_ptr": "*fp32", "bias_ptr": "*fp16", "out_ptr": "*fp16", "M": "i32", "N": "i32", "stride_om": "i32"},
            constexprs={"SPLIT_K": split, "BLOCK_N": 512, "HAS_BIAS": True},
            aligned=("partial_ptr", "bias_ptr", "out_ptr", "N", "stride_om"),
        ))
    return specs
