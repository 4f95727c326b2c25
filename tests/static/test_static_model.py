"""The bandwidth model on a toy machine where every number is easy to work out by hand:
2 SMs at 1 GHz, 100 GB/s of copy bandwidth (100 bytes a cycle), 4 issue slots a cycle."""

import dataclasses

import pytest

from fastcot.static.model import A100, H100, BlockWork, Machine, predict

TOY = Machine(name="toy", arch=90, sms=2, clock_ghz=1.0, copy_bandwidth_gbs=100.0, dram_latency_ns=100.0,
              l1_latency_cycles=10.0, launch_us=0.0, pdl_launch_us=0.0, l2_bandwidth_gbs=1000.0, pipe_rates={"xu": 0.5, "fma": 4.0})


def work(cycles=10.0, warp_instructions=40.0, pipes=None, nbytes=1000.0, l2=0.0):
    return BlockWork(cycles=cycles, warp_instructions=warp_instructions, pipe_instructions=pipes or {}, bytes=nbytes,
                     l2_bytes=l2)


def test_memory_bound_reaches_the_copy_bandwidth():
    # 4 blocks, 2 an SM: latency 10, issue 2 x 40 / 4 = 20, memory 4 x 1000 / 100 = 40 cycles.
    p = predict(work(), grid=4, blocks_per_sm=2, machine=TOY, call_bytes=4000)
    assert (p.bound, p.limiter) == ("memory", "memory")
    assert p.kernel_us == pytest.approx(0.040) and p.fraction == pytest.approx(1.0)
    assert p.load == {"latency": 0.25, "issue": 0.5, "memory": 1.0}


def test_a_slow_pipe_makes_it_issue_bound():
    # xu: 2 blocks x 8 warp-instructions / 0.5 a cycle = 32 cycles; memory 4 x 250 / 100 = 10; issue 20.
    p = predict(work(pipes={"xu": 8.0, "fma": 8.0}, nbytes=250), grid=4, blocks_per_sm=2, machine=TOY,
                call_bytes=1000)
    assert (p.bound, p.limiter) == ("issue", "xu")
    assert p.fraction == pytest.approx(10 / 32)


def test_latency_bound_rounds_and_the_partial_last_wave():
    # 6 blocks, 4 slots: a full round (2 an SM) and a round of 2 (1 an SM), each 100 cycles of latency.
    p = predict(work(cycles=100.0), grid=6, blocks_per_sm=2, machine=TOY, call_bytes=6000)
    assert [(r["blocks"], r["per_sm"], r["repeat"], r["limiter"]) for r in p.rounds] == [
        (4, 2, 1, "latency"), (2, 1, 1, "latency")]
    assert p.kernel_us == pytest.approx(0.200)
    assert p.fraction == pytest.approx(0.060 / 0.200)  # 6000 B at 100 GB/s: 0.06 us
    assert p.bound == "latency"


def test_identical_full_rounds_are_counted_together():
    p = predict(work(cycles=100.0), grid=12, blocks_per_sm=2, machine=TOY, call_bytes=12000)
    assert [(r["blocks"], r["repeat"]) for r in p.rounds] == [(4, 3)]
    assert p.kernel_us == pytest.approx(0.300)


def test_launches_and_split_partials_add_their_time():
    toy = dataclasses.replace(TOY, launch_us=1.0)
    p = predict(work(), grid=4, blocks_per_sm=2, machine=toy, call_bytes=4000, extra_launches=1, extra_bytes=1e6)
    # 0.04 us of kernel + 2 launches of 1 us + 1 MB through a 1000 GB/s L2 (1 us).
    assert p.overhead_us == pytest.approx(3.0) and p.time_us == pytest.approx(3.04)
    assert p.fraction == pytest.approx(0.04 / 3.04)


def test_a_pdl_launch_pays_only_the_main_kernels_smaller_charge():
    toy = dataclasses.replace(TOY, launch_us=1.0, pdl_launch_us=0.25)
    plain = predict(work(), grid=4, blocks_per_sm=2, machine=toy, call_bytes=4000, extra_launches=1)
    pdl = predict(work(), grid=4, blocks_per_sm=2, machine=toy, call_bytes=4000, extra_launches=1, pdl=True)
    # The main kernel's launch overlaps the previous kernel; an extra launch still pays in full.
    assert plain.overhead_us == pytest.approx(2.0) and pdl.overhead_us == pytest.approx(1.25)
    assert pdl.kernel_us == plain.kernel_us and pdl.fraction == pytest.approx(0.04 / 1.29)


def test_partials_reduced_in_kernel_share_the_round_with_the_stream():
    # 4 blocks of 1000 B, 2 an SM; 1000 B of partials a block through an L2 of 1000 GB/s (1000 B a
    # cycle): l2 = 4 x 2000 / 1000 = 8 cycles, under memory's 40, so they cost nothing extra ...
    p = predict(work(nbytes=1000, l2=1000.0), grid=4, blocks_per_sm=2, machine=TOY, call_bytes=4000)
    assert p.limiter == "memory" and p.load["l2"] == pytest.approx(0.2) and p.fraction == pytest.approx(1.0)
    # ... but bind when the L2 is slower than the copy bandwidth's share (l2 = 80 cycles).
    slow = dataclasses.replace(TOY, l2_bandwidth_gbs=100.0)
    p = predict(work(nbytes=1000, l2=1000.0), grid=4, blocks_per_sm=2, machine=slow, call_bytes=4000)
    assert (p.bound, p.limiter) == ("memory", "l2") and p.fraction == pytest.approx(0.5)


def test_bad_inputs_and_the_shipped_machines():
    with pytest.raises(ValueError, match="blocks_per_sm"):
        predict(work(), grid=4, blocks_per_sm=0, machine=TOY, call_bytes=1)
    assert (H100.sms, H100.arch, A100.sms, A100.arch) == (132, 90, 108, 80)
    # fp32 results per clock per SM: 128 on sm_90, 64 on sm_80 (warp-instructions: 4 and 2).
    assert (H100.pipe_rates["fma"], A100.pipe_rates["fma"], H100.pipe_rates["xu"]) == (4.0, 2.0, 0.5)
    assert H100.latencies().dram == pytest.approx(800 * 1.755)
