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
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two (decode sizes are tuned separately)."""
    return 1 if m <= 1 else 1 << (m - 1).bit_length()


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # Size the CPU/interpreter path as for an H100 so its code paths match.


def _split_k(tiles: int, k: int, block_k: int, num_sms: int) -> int:
    """Smallest power-of-two split of K that gives about four programs per SM."""
    split = 1
    while tiles * split < 4 * num_sms and k // (split * 2) >= 2 * block_k and split < 16:
        split *= 2
    return split


def fit_block_k(block_k: int, k: int) -> int:
    """Shrink a tile's K extent for tiny K; it stays a power of two of at least 16."""
    while block_k > 16 and block_k // 2 >= k:
        block_k //= 2
    return block_k


def candidate_configs(m: int, n: int, k: int, device: torch.device) -> list[Int4MatmulConfig]:
    """Shipped configurations for this problem, best guess first."""
    sms = _num_sms(device)
    if m == 1:
        tiles = [(16, 256, 4, 2), (32, 256, 4, 2), (8, 512, 4, 2), (16, 512, 4, 3), (32, 128, 4, 3), (64, 128, 4, 2)]
        out = []
        for bn, bk, warps, stages in tiles:
            bk = fit_block_k(bk, k)
            split = _split_k(triton_cdiv(n, bn), k, bk, sms)
            for s in sorted({split, max(1, split // 2)}):
                out.append(Int4MatmulConfig(1, bn, bk, s, 1, warps, stages))
        return out
    if m <= 64:
        bm = max(16, m_bucket(m))
        tiles = [(64, 128, 4, 3), (32, 256, 4, 2), (128, 64, 4, 3), (64, 256, 8, 2)]
        out = []
        for bn, bk, warps, stages in tiles:
            bk = fit_block_k(bk, k)
            split = _split_k(triton_cdiv(n, bn) * triton_cdiv(m, bm), k, bk, sms)
            for s in sorted({split, max(1, split // 2)}):
                out.append(Int4MatmulConfig(bm, bn, bk, s, 1, warps, stages))
        return out
    tiles = [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 256, 64, 8, 3), (128, 64, 64, 4, 4), (64, 64, 128, 4, 3)]
    return [
        Int4MatmulConfig(bm, bn, fit_block_k(bk, k), 1, 8, warps, stages)
        for bm, bn, bk, warps, stages in tiles
    ]


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
