"""The warp replay: stall counts, scoreboards, copy groups and barriers, on hand-built
instruction sequences whose timing is worked out by hand in each test."""

from fastcot.static.sass import NO_BARRIER, Instruction
from fastcot.static.timing import Latencies, Warp, block_timing, streaming_loads

LAT = Latencies(dram=500.0, cached=40.0, shared=30.0, barrier=20.0)


def ins(address, opcode, operands="", *, stall=1, wb=NO_BARRIER, rb=NO_BARRIER, wait=0) -> Instruction:
    control = (stall << 41) | (wb << 46) | (rb << 49) | (wait << 52)
    return Instruction(address, "", opcode, operands, control)


def test_fixed_latency_instructions_advance_by_their_stall_counts():
    warp = Warp(LAT, streaming=set())
    assert warp.run([ins(0, "IADD3", stall=4), ins(16, "FFMA", stall=2), ins(32, "LOP3.LUT")]) == 7


def test_a_consumer_waits_for_its_load_dram_when_streaming_l1_otherwise():
    path = [ins(0, "LDG.E.128", wb=0), ins(16, "LDG.E.U16", wb=1), ins(32, "HADD2.F32", wait=0b10),
            ins(48, "FFMA", wait=0b01)]
    warp = Warp(LAT, streaming={0})
    # LDG at 0 (streaming: ready at 500), LDG at 1 (cached: ready at 41), HADD2 issues at 41, FFMA at 500.
    assert warp.run(path) == 501


def test_a_wait_on_a_shared_scoreboard_waits_for_every_load_on_it():
    # Scoreboards count: a short load sharing SB5 with a streaming prefetch waits for the prefetch.
    path = [ins(0, "LDG.E.128.CONSTANT", wb=5), ins(16, "LDG.E.U16.CONSTANT", wb=5), ins(32, "FMUL", wait=1 << 5)]
    assert Warp(LAT, streaming={0}).run(path) == 501
    assert Warp(LAT, streaming=set()).run(path) == 42  # both cached: 1 + 40 + 1


def test_copy_groups_and_depbar_keep_n_groups_in_flight():
    first = [ins(0, "LDGSTS.E.BYPASS.128"), ins(16, "LDGDEPBAR")]  # group 1: issued at 0, done at 500
    second = [ins(32, "LDGSTS.E.BYPASS.128"), ins(48, "LDGDEPBAR")]  # group 2: issued at 2, done at 502
    keep_one = Warp(LAT, streaming={0, 32})
    keep_one.run(first + second + [ins(64, "DEPBAR.LE", "SB0, 0x1")])
    assert keep_one.t == 501  # the DEPBAR issued once group 1 was in
    keep_none = Warp(LAT, streaming={0, 32})
    keep_none.run(first + second + [ins(64, "DEPBAR.LE", "SB0, 0x0")])
    assert keep_none.t == 503  # ... or both


def test_a_block_barrier_costs_its_fixed_time():
    assert Warp(LAT, streaming=set()).run([ins(0, "BAR.SYNC.DEFER_BLOCKING", "0x0"), ins(16, "FADD")]) == 22


def test_block_timing_extrapolates_iterations_beyond_the_simulated_ones():
    loop = [ins(0, "FFMA", stall=6), ins(16, "BRA", "0x0", stall=4)]  # 10 cycles an iteration
    pro, epi = [ins(100, "S2R", wb=0), ins(116, "IADD3", wait=1)], [ins(200, "EXIT")]
    short = block_timing(pro, loop, epi, iterations=3, latencies=LAT, streaming=set(), simulated=8)
    long = block_timing(pro, loop, epi, iterations=20, latencies=LAT, streaming=set(), simulated=8)
    assert short.iteration_cycles == long.iteration_cycles == 10
    assert long.cycles - short.cycles == 17 * 10


def test_peak_streaming_bytes_counts_loads_in_flight_together():
    path = [ins(0, "LDG.E.128", wb=0), ins(16, "LDG.E.128", wb=0), ins(32, "FFMA", wait=1),
            ins(48, "LDG.E.128", wb=0), ins(64, "FFMA", wait=1)]
    warp = Warp(LAT, streaming={0, 16, 48})
    warp.run(path)
    assert warp.peak_streaming_bytes() == 2 * 32 * 16  # two 16-byte loads per lane, 32 lanes


def test_streaming_loads_are_the_widest_vector_loads_in_program_order_up_to_the_bytes():
    path = [ins(0, "LDG.E.U16"), ins(16, "LDG.E.128"), ins(32, "LDG.E"), ins(48, "LDG.E.64"),
            ins(64, "LDG.E.128"), ins(80, "LDG.E.128")]
    assert streaming_loads(path, 32) == {16, 64}
    assert streaming_loads(path, 40) == {16, 64}  # the third 16-byte load would pass 40: stop there
    assert streaming_loads(path, 56) == {16, 64, 80, 48}
    assert streaming_loads(path, 1000) == {16, 48, 64, 80}  # narrow loads (2 and 4 bytes) never stream


def test_streamed_loads_are_those_marked_evict_first_whatever_the_program_order():
    from fastcot.static import sass
    from fastcot.static.timing import streaming_loads

    x = sass._instruction(0x00, "LDG.E.EL.128 R4, desc[UR4][R2.64]")  # activations: declared reuse
    w = sass._instruction(0x10, "LDG.E.EF.128 R8, desc[UR4][R6.64]")  # weights: declared stream
    plain = sass._instruction(0x20, "LDG.E.128 R12, desc[UR4][R10.64]")
    assert streaming_loads([x, w], 16) == {0x10}
    assert streaming_loads([x, plain, w], 32) == {0x10, 0x20}
    assert streaming_loads([x, plain], 16) == {0x20}  # unmarked before evict-last
