"""Occupancy and waves on cases worked out by hand with the CUDA occupancy calculator's rules."""

import pytest

from fastcot.static.occupancy import ARCHS, blocks_per_sm, shared_per_block, waves

SM80, SM90 = ARCHS[80], ARCHS[90]


@pytest.mark.parametrize("regs, threads, blocks", [
    # regs x 32 rounded up to 256 per warp; 16384 registers per sub-partition hold whole warps.
    (96, 128, 5),  # 3072 a warp: 5 a sub-partition, 20 warps, 5 blocks of 4
    (148, 128, 3),  # 4864: 3 a sub-partition, 12 warps
    (153, 128, 3),  # 5120: 3
    (82, 128, 5),  # 2816: 5
    (40, 128, 12),  # 1280: 12 a sub-partition, 48 warps
    (252, 128, 2),  # 8192: 2 a sub-partition, 8 warps
    (99, 256, 2),  # 3328: 4 a sub-partition, 16 warps, 2 blocks of 8
])
def test_register_limit(regs, threads, blocks):
    occ = blocks_per_sm(SM90, threads, regs, shared=0)
    assert occ.by["registers"] == blocks
    assert occ.blocks_per_sm == min(blocks, occ.by["threads"], 32)


def test_other_limits():
    assert blocks_per_sm(SM90, 1024, 16, 0).by["threads"] == 2  # 64 warps / 32
    assert blocks_per_sm(SM90, 32, 16, 0).blocks_per_sm == 32  # the per-SM block limit
    assert blocks_per_sm(SM90, 128, 256, 0).blocks_per_sm == 0  # over 255 registers a thread
    big = blocks_per_sm(SM90, 128, 80, shared=39936)
    assert (big.blocks_per_sm, big.limiter) == (5, "shared memory")  # 233472 // 39936
    assert blocks_per_sm(SM80, 128, 80, shared=39936).blocks_per_sm == 4  # 167936 // 39936
    assert blocks_per_sm(SM90, 128, 32, shared=232448 + 128).blocks_per_sm == 0  # over 227 KB a block


def test_shared_memory_per_block_counts_the_reserved_kilobyte_once():
    # Triton: dynamic 38912 B; sm_90's cuobjdump SHARED (1024) already holds the reserve, sm_80's (0) does not.
    assert shared_per_block(SM90, listed=1024, dynamic=38912) == 39936
    assert shared_per_block(SM80, listed=0, dynamic=38912) == 39936
    assert shared_per_block(SM80, listed=64, dynamic=0) == 1152  # 1088 rounded up to 128


@pytest.mark.parametrize("grid, per_sm, sms, expect_waves, expect_eff", [
    (512, 3, 132, 512 / 396, (512 / 396) / 2),  # 1.29 waves: the second is 29% full
    (396, 3, 132, 1.0, 1.0),
    (3584, 5, 132, 3584 / 660, (3584 / 660) / 6),
    (448, 12, 132, 448 / 1584, (448 / 132) / 4),  # one wave: the busiest SM holds 4 of 3.39
    (512, 5, 132, 512 / 660, (512 / 132) / 4),
])
def test_waves_and_their_efficiency(grid, per_sm, sms, expect_waves, expect_eff):
    w = waves(grid, per_sm, sms)
    assert w.waves == pytest.approx(expect_waves)
    assert w.efficiency == pytest.approx(expect_eff)
