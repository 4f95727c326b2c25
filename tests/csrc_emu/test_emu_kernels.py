"""csrc's kernels and launchers, unmodified, on the CPU through the SIMT emulator.

Every case of emu_cases.py (the shapes, dtypes, GQA ratios, head sizes, splits and empty
sequences the Triton tests use) runs in the three thread orders and must match
fastcot.kernels.reference within its bound each time, and give the same bits in every order
(a result that depends on the order threads run in is a race). The launchers' own checks and
launch configurations are tested here too, without nvcc or a GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import emu_cases
import pytest
import torch
from simt_emu import emulator

from fastcot.kernels.cuda import decode_group_tiles

pytestmark = pytest.mark.skipif(emulator.unavailable_reason() is not None,
                                reason=f"SIMT emulator unavailable: {emulator.unavailable_reason()}")

ORDERS = [("forward", 0), ("reverse", 0), ("random", 7)]
CACHE_TYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16", torch.float8_e4m3fn: "__nv_fp8_e4m3"}


@pytest.fixture(scope="module")
def emu():
    emulator.library()  # built (or found in build/simt) once for the module
    emulator.set_workers(2)
    return emulator


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("name", list(emu_cases.CASES))
def test_kernel_matches_reference_in_every_thread_order(emu, name):
    outcomes = {}
    for order, seed in ORDERS:
        with emu.thread_order(order, seed):
            outcomes[order] = emu_cases.run_case(emu, name)
        assert outcomes[order].ok, f"{order} order: {outcomes[order].detail}"
    first = outcomes["forward"].output
    for order, o in outcomes.items():
        assert same_bits(o.output, first), f"{order} order gives other bits than forward: a race"


def launched(outcome) -> list[tuple[str, list, list]]:
    return [(entry["kernel"].split(" launched at ")[0], entry["grid"], entry["block"]) for entry in outcome.launches]


@pytest.mark.parametrize("name", [n for n in emu_cases.CASES if n.startswith("decode")])
def test_decode_launches_one_block_per_sequence_kv_head_tile_and_split(emu, name):
    case = emu_cases.CASES[name]
    outcome = emu_cases.run_case(emu, name)
    group = case.q_heads // case.kv_heads
    tiles = decode_group_tiles(group)
    tile = -(-group // tiles)
    tile = 1 if tile <= 1 else 2 if tile <= 2 else 4 if tile <= 4 else 8
    cache = CACHE_TYPES[torch.float8_e4m3fn if case.cache == "fp8" else case.q_dtype]
    runs = launched(outcome)
    batch = len(case.seq_lens)
    assert runs[0] == (f"void fastcot::paged_decode_kernel<{cache}, {case.head_dim}, {tile}>(fastcot::PagedDecodeArgs)",
                       [batch, case.kv_heads * tiles, case.num_splits], [128, 1, 1])
    if case.num_splits > 1:
        assert runs[1] == ("fastcot::paged_decode_merge_kernel(fastcot::PagedDecodeArgs, int)",
                           [batch, case.q_heads, 1], [case.head_dim, 1, 1])
    assert len(runs) == 1 + (case.num_splits > 1)


@pytest.mark.parametrize("m, tile", [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (16, 16)])
@pytest.mark.parametrize("k, vec", [(96, 4), (72, 1)])
def test_gemv_picks_the_m_tile_and_load_width(emu, m, tile, k, vec):
    gen = torch.Generator().manual_seed(m * k)
    w = emu_cases.make_weight(8, k, -1, torch.float16, symmetric=False, act_order=False, gen=gen)
    emu.launches()
    emu.int4_gemv(torch.randn(m, k, generator=gen).half(), w)
    assert launched(emu_cases.Outcome(0, 0, launches=emu.launches())) == [
        (f"void fastcot::int4_gemv_kernel<__half, {tile}, {vec}>(fastcot::Int4GemvArgs)", [2, 1, 1], [128, 1, 1])]


@pytest.mark.parametrize("m, tile, blocks", [(1, 8, 3), (8, 8, 3), (9, 16, 2)])
@pytest.mark.parametrize("dtype, name", [(torch.float16, "__half"), (torch.bfloat16, "__nv_bfloat16")])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gemv_takes_tensor_cores_for_16_bit_x_and_128_multiples(emu, m, tile, blocks, dtype, name, symmetric):
    gen = torch.Generator().manual_seed(m)
    w = emu_cases.make_weight(40, 512, 128, dtype, symmetric=symmetric, act_order=False, gen=gen)
    emu.launches()
    emu.int4_gemv(torch.randn(m, 512, generator=gen).to(dtype), w)
    # Blocks of 16 columns (M tile 8) or 32 (M tile 16); 4 chunks of K, so 4 warps (one wave
    # on any GPU); each warp's ring of 4 stages of 16 bytes per lane and tile in shared memory.
    launches = emu.launches()
    assert launched(emu_cases.Outcome(0, 0, launches=launches)) == [
        (f"void fastcot::int4_mma_kernel<{name}, {tile}, {str(not symmetric).lower()}>(fastcot::Int4MmaArgs)",
         [blocks, 1, 1], [128, 1, 1])]
    assert launches[0]["dynamic_smem"] == 4 * 4 * (tile // 4) * 32 * 16
    # Scales of another dtype, or groups of 64, take the SIMT kernel.
    w64 = emu_cases.make_weight(40, 512, 64, dtype, symmetric=False, act_order=False, gen=gen)
    emu.int4_gemv(torch.randn(m, 512, generator=gen).to(dtype), w64)
    assert "int4_gemv_kernel" in emu.launches()[0]["kernel"]


@pytest.mark.parametrize("device, sms", [("sm_90", 132), ("sm_80", 108)])
def test_gemv_sixteen_warp_ring_fits_the_device(emu, device, sms):
    # M tile 16 over 50 chunks and 2 blocks: 16 warps, 16 x 8 KB = 128 KB of dynamic shared
    # memory, within the opt-in limit of an H100 and an A100 (the launcher asks for it).
    gen = torch.Generator().manual_seed(sms)
    w = emu_cases.make_weight(40, 6400, -1, torch.bfloat16, symmetric=True, act_order=False, gen=gen)
    x = torch.randn(16, 6400, generator=gen).to(torch.bfloat16)
    try:
        emu.set_device(device)
        emu.launches()
        out = emu.int4_gemv(x, w)
        launches = emu.launches()
    finally:
        emu.set_device("sm_90")
    assert launches[0]["block"] == [512, 1, 1] and launches[0]["dynamic_smem"] == 128 * 1024
    assert launches[0]["error"] == "cudaSuccess"
    ref = emu_cases.reference.int4_matmul(x.double(), w.qweight, w.scales, w.zeros, w.perm, w.group_size, None,
                                         compute_dtype=torch.float64)
    assert torch.allclose(out.double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


PDL_SCRIPT = """
import json, sys
sys.path[:0] = sys.argv[1:]
import emu_cases, torch
from simt_emu import emulator
gen = torch.Generator().manual_seed(3)
x = torch.randn(2, 512, generator=gen).half()
for group_size in (128, 64):  # the tensor-core kernel, then the SIMT one
    emulator.int4_gemv(x, emu_cases.make_weight(40, 512, group_size, torch.float16, symmetric=False,
                                                act_order=False, gen=gen))
print(json.dumps([(entry["kernel"].split("<")[0], entry["programmatic"]) for entry in emulator.launches()]))
"""


def gemv_launches_in_a_process(environment: dict) -> list:
    """(kernel, programmatic) of an int4_gemv call per kernel, in a fresh process (the launcher
    reads FASTCOT_PDL once)."""
    here = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-c", PDL_SCRIPT, str(here), str(here.parent)], check=False,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **environment})
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(entry) for entry in json.loads(done.stdout.splitlines()[-1])]


@pytest.mark.parametrize("device", ["sm_90", "sm_80"])
def test_gemv_launches_with_pdl_from_sm_90(emu, device):
    # sm_90 and later: cudaLaunchKernelEx with programmatic stream serialization, for both kernels.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 512, generator=gen).half()
    try:
        emu.set_device(device)
        emu.launches()
        for group_size in (128, 64):  # the tensor-core kernel, then the SIMT one
            w = emu_cases.make_weight(40, 512, group_size, torch.float16, symmetric=False, act_order=False, gen=gen)
            emu.int4_gemv(x, w)
        launches = emu.launches()
    finally:
        emu.set_device("sm_90")
    expected = device == "sm_90" and os.environ.get("FASTCOT_PDL") != "0"
    assert [(entry["kernel"].split("<")[0], entry["programmatic"], entry["error"]) for entry in launches] == [
        ("void fastcot::int4_mma_kernel", expected, "cudaSuccess"),
        ("void fastcot::int4_gemv_kernel", expected, "cudaSuccess"),
    ]


def test_fastcot_pdl_0_turns_pdl_off():
    assert gemv_launches_in_a_process({"FASTCOT_PDL": "0", "SIMT_DEVICE": "sm_90"}) == [
        ("void fastcot::int4_mma_kernel", False), ("void fastcot::int4_gemv_kernel", False)]
    assert gemv_launches_in_a_process({"FASTCOT_PDL": "1", "SIMT_DEVICE": "sm_90"}) == [
        ("void fastcot::int4_mma_kernel", True), ("void fastcot::int4_gemv_kernel", True)]


# ---- the launchers' own checks, before any launch --------------------------------------------


def small_weight(n=16, k=64, group_size=32):
    gen = torch.Generator().manual_seed(5)
    return emu_cases.make_weight(n, k, group_size, torch.float16, symmetric=False, act_order=False, gen=gen)


def test_gemv_refuses_more_than_16_rows(emu):
    with pytest.raises(ValueError, match=r"int4_gemv: serves decode sizes M <= 16, got M=17"):
        emu.int4_gemv(torch.randn(17, 64).half(), small_weight())
    assert emu.launches() == []


def gemv_fields(w, activations, out, changes):
    fields = dict(x=activations, qweight=w.qweight, scales=w.scales, zeros=w.zeros, bias=None, out=out,
                  m=activations.shape[0], n=16, k=64, group_size=32, stride_xm=activations.stride(0), stride_om=16,
                  x_dtype=1, scale_dtype=1, bias_dtype=1)
    return {**fields, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"x": "misaligned"}, "16-byte aligned"),
    ({"stride_xm": 60}, "16-byte aligned"),
    ({"stride_om": 8}, "out rows overlap"),
    ({"group_size": 24}, "group_size must be -1 or a positive multiple of 8 dividing K"),
    ({"k": 12}, "K must be a multiple of 8"),
    ({"x_dtype": 3}, "float32, float16 or bfloat16"),
    ({"scales": None}, "must be non-null"),
])
def test_gemv_launcher_checks(emu, changes, message):
    w, x, out = small_weight(), torch.randn(2, 64).half(), torch.full((2, 16), float("nan")).half()
    if changes.get("x") == "misaligned":
        changes = {"x": x.data_ptr() + 2}
    with pytest.raises(ValueError, match=re.escape(message)):
        emu.call("int4_gemv", **gemv_fields(w, x, out, changes))
    assert out.isnan().all() and emu.launches() == []


def decode_inputs(**changes):
    args = dict(q=torch.randn(2, 4, 64).half(), k_cache=torch.randn(4, 16, 2, 64).half(),
                v_cache=torch.randn(4, 16, 2, 64).half(), block_tables=torch.arange(4, dtype=torch.int32).view(2, 2),
                seq_lens=torch.tensor([20, 9], dtype=torch.int32))
    return {**args, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"q": torch.randn(2, 4, 96).half(), "k_cache": torch.randn(4, 16, 2, 96).half(),
      "v_cache": torch.randn(4, 16, 2, 96).half()}, "head_dim must be 64, 128 or 256, got 96"),
    ({"k_cache": torch.randn(4, 12, 2, 64).half(), "v_cache": torch.randn(4, 12, 2, 64).half()},
     "block_size must be a power of two from 8 to 256, got 12"),
    ({"q": torch.randn(2, 3, 64).half()}, "Hq=3 is not a multiple of Hkv=2"),
    ({"q": torch.randn(2, 4, 64), "k_cache": torch.randn(4, 16, 2, 64), "v_cache": torch.randn(4, 16, 2, 64)},
     "float32 caches are not served"),
    ({"k_cache": torch.randn(4, 16, 2, 64).bfloat16(), "v_cache": torch.randn(4, 16, 2, 64).bfloat16()},
     "the cache must have q's dtype or be float8_e4m3fn"),
])
def test_decode_launcher_checks(emu, changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        emu.paged_decode_attention(**decode_inputs(**changes), num_splits=1)
    assert emu.launches() == []


@pytest.mark.parametrize("splits", [0, 65])
def test_decode_refuses_split_counts_out_of_range(emu, splits):
    with pytest.raises(ValueError, match=rf"num_splits must be in \[1, 64\], got {splits}"):
        emu.paged_decode_attention(**decode_inputs(), num_splits=splits)


def test_empty_inputs_launch_nothing(emu):
    out = emu.paged_decode_attention(torch.randn(0, 4, 64).half(), torch.randn(4, 16, 2, 64).half(),
                                     torch.randn(4, 16, 2, 64).half(), torch.zeros(0, 3, dtype=torch.int32),
                                     torch.zeros(0, dtype=torch.int32), num_splits=1)
    assert out.shape == (0, 4, 64)
    w = small_weight()
    emu.int4_gemv(torch.randn(0, 64).half(), w)
    assert emu.launches() == []


def test_default_split_count_is_the_ops_choice(emu):
    inputs = decode_inputs(block_tables=torch.arange(4, dtype=torch.int32).repeat(2, 64))  # 2048-token tables
    emu.launches()
    emu.paged_decode_attention(**inputs)
    grid = emu.launches()[0]["grid"]
    assert grid[2] == emu.default_num_splits(inputs["q"], inputs["k_cache"], inputs["block_tables"]) > 1
