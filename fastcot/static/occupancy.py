"""Resident blocks per SM from registers, shared memory and threads, and the waves a grid takes.

The rules are those of the CUDA occupancy calculator (`cuda_occupancy.h`): registers are
allocated per warp in units of 256 and each of the SM's 4 sub-partitions holds whole warps;
shared memory is allocated in units of 128 bytes plus 1 KB the system reserves per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ArchLimits:
    name: str
    max_warps: int = 64
    max_blocks: int = 32
    registers: int = 65536
    register_unit: int = 256  # per warp
    sub_partitions: int = 4
    max_registers_per_thread: int = 255
    shared_per_sm: int = 0
    shared_per_block: int = 0
    shared_unit: int = 128
    reserved_shared_per_block: int = 1024
    # cuobjdump's SHARED for sm_90 cubins already counts the reserved 1 KB (ptxas -v and the
    # sm_80 listing do not): counted once either way.
    listing_includes_reserved: bool = False


ARCHS = {
    80: ArchLimits("sm_80", shared_per_sm=164 * 1024, shared_per_block=163 * 1024),
    90: ArchLimits("sm_90", shared_per_sm=228 * 1024, shared_per_block=227 * 1024, listing_includes_reserved=True),
}


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def shared_per_block(limits: ArchLimits, listed: int, dynamic: int = 0) -> int:
    """Bytes of shared memory a block holds: the cubin's static SHARED, the launch's dynamic
    shared memory (Triton's `metadata.shared`) and the system's reserved 1 KB, rounded up."""
    reserved = 0 if limits.listing_includes_reserved else limits.reserved_shared_per_block
    return round_up(listed + dynamic + reserved, limits.shared_unit)


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    limiter: str  # "registers", "shared memory", "threads" or "blocks"
    by: dict


def blocks_per_sm(limits: ArchLimits, threads: int, registers: int, shared: int) -> Occupancy:
    """Resident blocks of `threads` threads using `registers` per thread and `shared` bytes
    (from `shared_per_block`) per block; 0 when one block does not fit."""
    warps = -(-threads // 32)
    by = {"threads": limits.max_warps // warps, "blocks": limits.max_blocks}
    if registers > limits.max_registers_per_thread:
        by["registers"] = 0
    elif registers:
        per_warp = round_up(registers * 32, limits.register_unit)
        per_partition = (limits.registers // limits.sub_partitions) // per_warp
        by["registers"] = per_partition * limits.sub_partitions // warps
    if shared:
        by["shared memory"] = 0 if shared > limits.shared_per_block else limits.shared_per_sm // shared
    limiter = min(by, key=lambda k: (by[k], k != "registers"))
    return Occupancy(blocks_per_sm=by[limiter], limiter=limiter, by=by)


@dataclass(frozen=True)
class Waves:
    waves: float  # blocks / (resident blocks per SM x SMs)
    efficiency: float  # share of the busiest SM's block slots doing work


def waves(grid: int, blocks_per_sm: int, sms: int) -> Waves:
    """A grid of more blocks than fit at once runs in waves and the last one is partly idle:
    efficiency = waves / ceil(waves). A grid that fits in one wave is limited by its busiest
    SM instead, which holds ceil(grid / SMs) blocks: efficiency = (grid / SMs) / that."""
    if grid <= 0 or blocks_per_sm <= 0:
        return Waves(0.0, 0.0)
    w = grid / (blocks_per_sm * sms)
    if w > 1:
        return Waves(w, w / math.ceil(w))
    return Waves(w, (grid / sms) / math.ceil(grid / sms))
