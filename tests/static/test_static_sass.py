"""Reading SASS: parsing with control bits, the hot loop, one iteration's path, the mix.

The listings in data/ are cut from real `cuobjdump -sass` output (each file's first line says
of what); every expected number below was counted by hand from those files.
"""

from pathlib import Path

import pytest

from fastcot.static import sass

DATA = Path(__file__).parent / "data"


def load(name: str) -> list[sass.Instruction]:
    functions = sass.parse((DATA / name).read_text())
    assert len(functions) == 1
    return next(iter(functions.values()))


def at(instrs, address: int) -> sass.Instruction:
    return next(i for i in instrs if i.address == address)


def test_parse_reads_predicates_opcodes_operands_and_the_control_word():
    instrs = load("cuda_gemv_sm90a.sass")
    assert len(instrs) == 139
    load_ = at(instrs, 0xA50)
    assert (load_.predicate, load_.opcode, load_.base) == ("", "LDG.E.128.CONSTANT", "LDG")
    assert load_.operands == "R28, desc[UR10][R30.64]"
    # Its control word 0x000f6800081ee900: stall 4, write scoreboard 5, no read scoreboard, no wait.
    assert (load_.stall, load_.write_barrier, load_.read_barrier, load_.wait_mask) == (4, 5, 7, 0)
    fmul = at(instrs, 0xDF0)  # waits on SB0 and SB5: the scale load and, sharing SB5, the prefetch
    assert fmul.wait_mask == 0b100001
    back = at(instrs, 0x3E70)
    assert (back.predicate, back.base, back.target, back.conditional) == ("!P0", "BRA", 0x6D0, True)
    assert at(instrs, 0xAE0).target == 0x5390  # CALL.REL.NOINC


def test_the_trap_branch_to_itself_is_not_a_loop():
    instrs = load("cuda_gemv_sm90a.sass")
    found = sass.loops(instrs)
    assert [(instrs[lp.head].address, instrs[lp.tail].address) for lp in found] == [(0x6D0, 0x3E70)]


@pytest.mark.parametrize("name, head, tail, size", [
    ("triton_gemv_sm90.sass", 0x6A0, 0xFC0, (0xFC0 - 0x6A0) // 16 + 1),
    ("triton_gemv_sm80.sass", 0x5B0, 0xFB0, (0xFB0 - 0x5B0) // 16 + 1),
    ("triton_decode_sm90.sass", 0x870, 0x1110, (0x1110 - 0x870) // 16 + 1),
])
def test_branch_free_loops_run_every_instruction_of_their_body(name, head, tail, size):
    instrs = load(name)
    loop = sass.hot_loop(instrs)
    assert (instrs[loop.head].address, instrs[loop.tail].address) == (head, tail)
    assert loop.static_size == size == len(loop.path)
    assert loop.path[0].address == head and loop.path[-1].address == tail


def test_the_iteration_path_takes_every_optional_block_and_the_longer_arm_of_each_choice():
    instrs = load("cuda_gemv_sm90a.sass")
    loop = sass.hot_loop(instrs)
    assert loop.static_size == 131  # 0x6d0..0xed0 (129) and 0x3e60, 0x3e70 in this cut
    taken = {i.address for i in loop.path}
    # The prefetch block behind `@P0 BRA 0xa90` is taken.
    assert {0xA50, 0xA60, 0xA70, 0xA80} <= taken
    # The 32-bit division inline (19 instructions) beats the 3-instruction call of the 64-bit one.
    assert {0xAD0, 0xAE0, 0xAF0}.isdisjoint(taken) and {0xB00, 0xC20} <= taken
    # The 16-bit scale arms (10 and 8 instructions) beat the float32 ones (3 each).
    assert {0xDA0, 0xDB0, 0xDC0, 0xEA0, 0xEB0, 0xEC0}.isdisjoint(taken) and {0xD00, 0xE30} <= taken
    assert len(loop.path) == 131 - 9


def test_instruction_mix_by_width_class_and_opcode():
    gemv90 = sass.hot_loop(load("triton_gemv_sm90.sass")).path
    mix = sass.mix(gemv90)
    assert mix["I2FP"] == 8 and "I2F" not in mix  # sm_90 converts int to float with I2FP ...
    assert mix["LDG.16"] == 10 and mix["LDG.32"] == 1 and mix["fp16x2"] == 10
    assert mix["fp32"] == 24  # 8 FFMA + 8 FADD + 8 FMUL
    assert sum(mix.values()) == len(gemv90)
    mix80 = sass.mix(sass.hot_loop(load("triton_gemv_sm80.sass")).path)
    assert mix80["I2F"] == 8 and "I2FP" not in mix80  # ... sm_80 with I2F, on the XU
    decode = sass.mix(sass.hot_loop(load("triton_decode_sm90.sass")).path)
    assert (decode["LDGSTS.128"], decode["LDG.32"], decode["HMMA"], decode["MUFU"], decode["SHFL"]) == (2, 1, 4, 10, 8)
    assert decode["barrier"] == 5  # DEPBAR, 2 BAR.SYNC, 2 LDGDEPBAR
    assert decode["F2FP"] == 4


def test_pipes_and_access_widths():
    decode = sass.hot_loop(load("triton_decode_sm90.sass")).path
    by_base = {i.base: i for i in decode}
    assert sass.pipe(by_base["MUFU"]) == "xu" and sass.pipe(by_base["HMMA"]) == "tensor"
    assert sass.pipe(by_base["FFMA"]) == "fma" and sass.pipe(by_base["FMNMX"]) == "alu"
    assert sass.pipe(by_base["LDGSTS"]) == "lsu" and sass.pipe(by_base["BRA"]) is None
    assert sass.access_bytes(by_base["LDGSTS"]) == 16 and sass.access_bytes(by_base["LDSM"]) == 16
    assert sass.access_bytes(by_base["LDG"]) == 4 and sass.access_bytes(by_base["FFMA"]) is None
    # Bytes one thread loads from global memory per iteration: 2 x 16 (K and V) + a table entry.
    loaded = sum(sass.access_bytes(i) for i in decode if sass.classify(i) in ("global_load", "async_copy"))
    assert loaded == 36


def test_copy_stages_from_the_depbar_waits():
    decode = sass.hot_loop(load("triton_decode_sm90.sass")).path
    assert sass.depbar_depth(decode) == 1  # DEPBAR.LE SB0, 0x0: every copy waited for: single-buffered
    deeper = [i if i.base != "DEPBAR" else sass.Instruction(i.address, "", i.opcode, "SB0, 0x2", i.control)
              for i in decode]
    assert sass.depbar_depth(deeper) == 3
    assert sass.depbar_depth(sass.hot_loop(load("triton_gemv_sm90.sass")).path) is None


def test_prologue_and_epilogue_paths():
    instrs = load("triton_decode_sm90.sass")
    loop = sass.hot_loop(instrs)
    pro = sass.prologue(instrs, loop)
    # `@!P0 BRA 0x6b0` reaches the loop; its fall-through ends in `BRA 0x1120`, which skips it.
    assert pro[0].address == 0x5C0 and pro[-1].address == 0x6B0
    assert {0x630, 0x6A0}.isdisjoint(i.address for i in pro)
    assert sum(i.base == "LDGSTS" for i in pro) == 2
    epi = sass.epilogue(instrs, loop)
    assert epi[0].address == 0x1120 and epi[-1].base == "EXIT"


def test_pdl_overlap_counts_only_what_the_sass_keeps_before_the_wait():
    # The PTX loads w before griddepcontrol.wait, but ptxas sinks the plain load below ACQBULK.
    sunk = sass.pdl_overlap(load("pdl_sunk_load_sm90a.sass"))
    assert (sunk.waits, sunk.loads_before, sunk.stores_before, sunk.triggers) == (True, 0, 0, True)
    assert not sunk.streams_early
    # An asm volatile load (LDG), a cp.async (LDGSTS) and an L2 prefetch (CCTL.E.PF2) stay above it.
    early = sass.pdl_overlap(load("pdl_early_loads_sm90a.sass"))
    assert (early.waits, early.loads_before, early.stores_before, early.triggers) == (True, 3, 0, False)
    assert early.streams_early
    # A kernel without the wait has nothing to overlap; one that stores before it may not overlap.
    assert not sass.pdl_overlap(load("cuda_gemv_sm90a.sass")).waits
    instrs = load("pdl_early_loads_sm90a.sass")
    store = sass._instruction(0x10, "STG.E desc[UR4][R2.64], R11")
    assert not sass.pdl_overlap([store, *instrs]).streams_early


def test_the_way_out_of_a_split_k_program_that_is_not_the_last_to_arrive():
    body = ["LDG.E.128 R4, desc[UR4][R2.64]", "FFMA R8, R4, R5, R8", "@P0 BRA 0x0",  # the loop
            "STG.E desc[UR4][R6.64], R8", "ATOMG.E.ADD.STRONG.GPU PT, R9, desc[UR4][R10.64], R11",
            "ISETP.NE.U32.AND P2, PT, R9, 0x1f, PT", "@P2 EXIT",  # every program but the last
            "LDG.E R12, desc[UR4][R6.64]", "FADD R8, R8, R12", "STG.E desc[UR4][R14.64], R8", "EXIT"]
    instrs = [sass._instruction(16 * n, text) for n, text in enumerate(body)]
    loop = sass.hot_loop(instrs)
    assert (loop.head, loop.tail) == (0, 2)
    assert [i.base for i in sass.epilogue_to_first_exit(instrs, loop)] == ["STG", "ATOMG", "ISETP", "EXIT"]
    assert len(sass.epilogue(instrs, loop)) == 8  # the last program's way out, through the reduction
