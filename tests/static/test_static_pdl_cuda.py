"""Programmatic dependent launch in the csrc int4 kernels, read from their SASS.

Under PDL a kernel starts while the one before it on the stream finishes; only what no earlier
kernel writes (the weights) may be touched before griddepcontrol.wait, whose SASS is ACQBULK
(griddepcontrol.launch_dependents is PREEXIT). ptxas sinks plain loads below the wait, so the
weights that do go first are cp.async copies (LDGSTS) in the tensor-core kernel and asm
volatile loads in the SIMT one. nvcc compiles csrc here (cached by source hash), or the
kernels are read from a built fastcot._C.
"""

import pytest

from fastcot.static import cubins
from fastcot.static.targets import CUDA_TYPES

CUDA_SOURCE = (cubins.find_nvcc() is not None and cubins.csrc_dir() is not None) or cubins.extension_path() is not None
pytestmark = [
    pytest.mark.skipif(cubins.find_cuobjdump() is None,
                       reason="no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)"),
    pytest.mark.skipif(not CUDA_SOURCE, reason="neither nvcc with csrc/ nor a built fastcot._C: no csrc kernels"),
]

GLOBAL_ACCESS = {"LDG", "LD", "STG", "ST", "ATOM", "ATOMG", "RED", "LDGSTS"}


def mma_symbol(dtype: str, m_tile: int, zeros: bool) -> str:
    return f"_ZN7fastcot15int4_mma_kernelI{CUDA_TYPES[dtype]}Li{m_tile}ELb{int(zeros)}EEEvNS_11Int4MmaArgsE"


def gemv_symbol(dtype: str, m_tile: int, vec: int) -> str:
    return f"_ZN7fastcot16int4_gemv_kernelI{CUDA_TYPES[dtype]}Li{m_tile}ELi{vec}EEEvNS_12Int4GemvArgsE"


def split_at_the_wait(symbol: str):
    """(instructions before the one ACQBULK, the ACQBULK, instructions after) of sm_90a's
    kernel, after checking that nothing before it branches past it."""
    try:
        instrs = cubins.cuda_kernel("int4_gemv.cu", symbol, 90).instructions
    except cubins.Unavailable as why:
        pytest.skip(str(why))
    waits = [i for i, ins in enumerate(instrs) if ins.base == "ACQBULK"]
    assert len(waits) == 1, f"{symbol}: expected one griddepcontrol.wait (ACQBULK), found {len(waits)}"
    before, wait, after = instrs[: waits[0]], instrs[waits[0]], instrs[waits[0] + 1 :]
    skipping = [ins.text() for ins in before if ins.target is not None and ins.target > wait.address]
    assert not skipping, f"{symbol}: branches past the wait: {skipping}"
    return before, wait, after


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("m_tile", [8, 16])
@pytest.mark.parametrize("zeros", [True, False])
def test_mma_kernel_copies_weights_before_the_wait_and_touches_nothing_else(dtype, m_tile, zeros):
    before, _, after = split_at_the_wait(mma_symbol(dtype, m_tile, zeros))
    early = [ins for ins in before if ins.base in GLOBAL_ACCESS]
    # The ring's first stages: LDGSTS only (x, scales, zeros, bias and every store come after).
    assert early and all(ins.base == "LDGSTS" for ins in early), [ins.text() for ins in early]
    assert any(ins.base == "PREEXIT" for ins in before), "launch_dependents should come before the wait"
    assert any(ins.base == "STG" for ins in after)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("m_tile, vec", [(1, 4), (16, 4), (1, 1)])
def test_simt_kernel_loads_only_weights_before_the_wait(dtype, m_tile, vec):
    before, _, after = split_at_the_wait(gemv_symbol(dtype, m_tile, vec))
    early = [ins for ins in before if ins.base in GLOBAL_ACCESS]
    # The first chunk's weights (a full row of 4 weight rows), nothing stored.
    assert len(early) == 4 and all(ins.base == "LDG" for ins in early), [ins.text() for ins in early]
    assert any(ins.base == "STG" for ins in after)


@pytest.mark.parametrize("symbol", [mma_symbol("fp16", 8, True), mma_symbol("bf16", 16, False),
                                    gemv_symbol("fp16", 1, 4)])
def test_sm80_has_no_griddepcontrol(symbol):
    try:
        instrs = cubins.cuda_kernel("int4_gemv.cu", symbol, 80).instructions
    except cubins.Unavailable as why:
        pytest.skip(str(why))
    assert not {"ACQBULK", "PREEXIT"} & {ins.base for ins in instrs}
