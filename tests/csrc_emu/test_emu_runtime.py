"""The SIMT emulator's own tests: CUDA semantics it must reproduce and bugs it must catch.

Kernels are in selftest_kernels.cu, built like csrc (translated, g++, plain build). Bugs that
end a launch (collective or barrier mismatch, deadlock, launch bounds, misaligned load) must
fail it with a message naming the kernel and the source line; a missing barrier must show up
as a wrong result in every thread order (shared memory is poisoned for every block).
Memory errors under AddressSanitizer are in test_emu_asan.py.
"""

from __future__ import annotations

import ctypes
import re

import pytest
import torch
from simt_emu import SELFTEST_DIR, build_selftests, emulator

pytestmark = pytest.mark.skipif(emulator.unavailable_reason() is not None,
                                reason=f"SIMT emulator unavailable: {emulator.unavailable_reason()}")

ORDERS = ["forward", "reverse", "random"]
SOURCE = (SELFTEST_DIR / "selftest_kernels.cu").read_text().splitlines()
SUCCESS, INVALID_VALUE, INVALID_CONFIGURATION, LAUNCH_FAILURE, OUT_OF_RESOURCES = 0, 1, 9, 719, 701
NOT_SUPPORTED = 801


def line_of(text: str) -> int:
    """1-based line of the selftest source containing `text` (exactly once)."""
    hits = [i + 1 for i, line in enumerate(SOURCE) if text in line]
    assert len(hits) == 1, (text, hits)
    return hits[0]


@pytest.fixture(scope="module")
def lib():
    lib = emulator.load(build_selftests("plain"))
    lib.simt_set_workers(2)
    yield lib
    lib.simt_set_order(b"forward", 0)


def run(lib, name: str, *args, order: str = "forward", seed: int = 0) -> tuple[int, str]:
    """(status, failure message) of simt_test_<name>(*args) in thread `order`."""
    assert lib.simt_set_order(order.encode(), seed) == 0
    ptrs = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args]
    status = getattr(lib, f"simt_test_{name}")(*ptrs)
    return status, emulator.take_failure(lib)


# ---- what correct kernels compute ---------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
def test_block_reduction_with_shuffles_and_shared_memory(lib, order):
    values = torch.rand(10000, generator=torch.Generator().manual_seed(1))
    out = torch.full((7,), float("nan"))
    assert run(lib, "block_reduce", values, out, 10000, 7, 256, order=order) == (SUCCESS, "")
    assert out.double().sum().item() == pytest.approx(values.double().sum().item(), rel=1e-5)


def test_built_in_variables_in_three_dimensions(lib):
    grid, block = (3, 2, 2), (4, 3, 2)
    threads = 24 * 12
    out = torch.full((threads * 6,), -1, dtype=torch.int32)
    assert run(lib, "coordinates", out, *grid, *block) == (SUCCESS, "")
    got = out.view(12, 24, 6)
    for b, (bz, by, bx) in enumerate((z, y, x) for z in range(2) for y in range(2) for x in range(3)):
        for t, (tz, ty, tx) in enumerate((z, y, x) for z in range(2) for y in range(3) for x in range(4)):
            assert got[b, t].tolist() == [tx, ty, tz, bx, by, bz]


def shuffle_model(values: list[int], op: str, arg: int, width: int) -> list[int]:
    """CUDA's documented results: lanes form segments of `width`; up/down/xor return the
    caller's own value when the source leaves the segment upward (xor may read an earlier one)."""
    out = []
    for lane in range(32):
        first = lane - lane % width
        src = {"idx": first + arg % width, "up": lane - arg, "down": lane + arg, "xor": lane ^ arg}[op]
        if op == "up" and src < first or op in ("down", "xor") and src >= first + width:
            src = lane
        out.append(values[src])
    return out


@pytest.mark.parametrize("op, arg, width", [("idx", 5, 32), ("idx", 10, 8), ("up", 3, 32), ("up", 2, 8),
                                            ("down", 1, 32), ("down", 3, 8), ("xor", 16, 32), ("xor", 12, 8),
                                            ("xor", 3, 4)])
def test_shuffles_follow_cuda_segment_rules(lib, op, arg, width):
    values = torch.arange(100, 132, dtype=torch.int32)
    out = torch.full((32,), -1, dtype=torch.int32)
    code = ["idx", "up", "down", "xor"].index(op)
    assert run(lib, "shuffles", values, out, code, arg, width) == (SUCCESS, "")
    assert out.tolist() == shuffle_model(values.tolist(), op, arg, width)


def test_shuffle_spot_checks_from_the_cuda_guide(lib):
    values = torch.arange(32, dtype=torch.int32)
    out = torch.empty(32, dtype=torch.int32)
    run(lib, "shuffles", values, out, 3, 12, 8)  # xor 12 in segments of 8
    assert out[3].item() == 3 and out[13].item() == 1  # a later segment refused, an earlier one read
    run(lib, "shuffles", values, out, 0, 10, 8)  # index 10 of segments of 8 reads lane 2 of each
    assert out[17].item() == 18


def test_votes_matches_and_reductions(lib):
    values = torch.tensor([3, -1, 3, 7] * 8, dtype=torch.int32)
    out = torch.zeros(32 * 9, dtype=torch.int32)
    assert run(lib, "votes", values, out) == (SUCCESS, "")
    o = out.view(32, 9)
    positive = sum(1 << lane for lane in range(32) if values[lane] > 0)
    assert (o[:, 0].to(torch.int64) & 0xFFFFFFFF == positive).all()
    assert (o[:, 1] == 0).all() and (o[:, 2] == 1).all()
    threes = sum(1 << lane for lane in range(32) if values[lane] == 3)
    assert (o[0, 3].item() & 0xFFFFFFFF) == threes and (o[1, 3].item() & 0xFFFFFFFF) == 0x22222222
    assert (o[:, 4] == 0).all() and (o[:, 5] == 0).all()  # not all equal
    assert (o[:, 6] == values.sum()).all() and (o[:, 7] == -1).all() and (o[:, 8] == 7).all()


def test_barrier_counts_and_votes(lib):
    values = torch.tensor([1, 0] * 48 + [1] * 32, dtype=torch.int32)
    out = torch.full((3,), -1, dtype=torch.int32)
    assert run(lib, "barrier_votes", values, out, 128) == (SUCCESS, "")
    assert out.tolist() == [80, 0, 1]


def test_disjoint_half_warp_collectives_at_two_sites_are_legal(lib):
    out = torch.full((32,), -1, dtype=torch.int32)
    assert run(lib, "half_warps", out, order="reverse") == (SUCCESS, "")
    assert out.tolist() == [30] * 16 + [200] * 16


def test_atomics_across_blocks_on_two_os_threads(lib):
    fsum, isum, umax = torch.zeros(1), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    assert run(lib, "atomics", fsum, isum, umax, 40, 96) == (SUCCESS, "")
    assert fsum.item() == 40 * 96 and isum.item() == 40 * sum(range(96)) and umax.item() == 39 * 1000 + 95


def test_thread_orders_are_what_they_say(lib):
    def ranks(order, seed=0):
        out, counter = torch.full((64,), -1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
        assert run(lib, "run_order", out, counter, 64, order=order, seed=seed) == (SUCCESS, "")
        return out.tolist()

    assert ranks("forward") == list(range(64))
    assert ranks("reverse") == list(range(63, -1, -1))
    shuffled = ranks("random", seed=1)
    assert sorted(shuffled) == list(range(64)) and shuffled not in (ranks("forward"), ranks("reverse"))
    assert ranks("random", seed=1) == shuffled and ranks("random", seed=2) != shuffled


def test_dynamic_shared_memory_and_its_opt_in(lib):
    threads = 256
    size = threads * 64 * 4  # 64 KiB: more than the 48 KiB a launch gets without opting in
    out = torch.full((threads * 64,), float("nan"))
    status, failure = run(lib, "dynamic_reverse", out, threads, size, 0)
    assert (status, failure) == (INVALID_VALUE, "") and out.isnan().all()  # refused, never ran
    assert run(lib, "dynamic_reverse", out, threads, size, size) == (SUCCESS, "")
    assert torch.equal(out, torch.arange(threads * 64 - 1, -1, -1, dtype=torch.float32))
    assert run(lib, "dynamic_reverse", out, threads, size, 300 * 1024)[0] == 1000 + INVALID_VALUE  # over sm_90's


@pytest.mark.parametrize("grid, block", [((1, 1, 1), (2048, 1, 1)), ((1, 1, 1), (1024, 2, 1)),
                                         ((1, 1, 1), (1, 1, 65)), ((1, 65536, 1), (32, 1, 1)),
                                         ((0, 1, 1), (32, 1, 1)), ((1, 1, 1), (0, 1, 1))])
def test_launch_configurations_the_driver_refuses(lib, grid, block):
    out = torch.full((4,), float("nan"))
    assert run(lib, "launch", out, *grid, *block) == (INVALID_CONFIGURATION, "")
    assert out.isnan().all()
    assert lib.simt_test_launch(ctypes.c_void_p(out.data_ptr()), 4, 1, 1, 1024, 1, 1) == SUCCESS
    assert (out == 1).all()


def test_launch_kernel_ex_runs_with_programmatic_serialization_and_refuses_other_attributes(lib):
    pdl, priority = 6, 8  # cudaLaunchAttributeProgrammaticStreamSerialization, cudaLaunchAttributePriority
    emulator.launches(lib)
    out = torch.full((4,), float("nan"))
    assert run(lib, "launch_ex", out, 4, 32, pdl, 1) == (SUCCESS, "") and (out == 1).all()
    assert run(lib, "launch_ex", out, 1, 2048, pdl, 0)[0] == INVALID_CONFIGURATION  # the same checks
    out.fill_(float("nan"))
    assert run(lib, "launch_ex", out, 4, 32, priority, 1)[0] == NOT_SUPPORTED and out.isnan().all()
    log = [(entry["kernel"].split(" launched at ")[1].split(":")[0].rsplit("/", 1)[-1], entry["programmatic"],
            entry["error"]) for entry in emulator.launches(lib)]
    assert log == [("selftest_kernels.cu", True, "cudaSuccess"),
                   ("selftest_kernels.cu", False, "cudaErrorInvalidConfiguration"),
                   ("selftest_kernels.cu", False, "cudaErrorNotSupported")]


# ---- bugs the emulator must catch ---------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
def test_missing_syncthreads_shows_in_every_order_and_every_block(lib, order):
    blocks, threads = 3, 96
    expected = torch.tensor([(t + 1) % threads + 1 for t in range(threads)] * blocks, dtype=torch.int32)
    out = torch.full((blocks * threads,), 0, dtype=torch.int32)
    assert run(lib, "neighbour_read", out, blocks, threads, 1, order=order) == (SUCCESS, "")
    assert torch.equal(out, expected)
    assert run(lib, "neighbour_read", out, blocks, threads, 0, order=order) == (SUCCESS, "")
    stale = (out != expected).view(blocks, threads)
    # A slot no thread has written yet reads the poison (-1), in the later blocks too.
    assert stale.any(dim=1).all() and (out.view(blocks, threads)[stale] == -1).all()
    if order == "forward":
        assert (stale.sum(dim=1) == threads - 1).all()


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_shuffle_naming_lanes_that_exited_is_caught(lib, order):
    status, failure = run(lib, "shuffle_after_exit", torch.zeros(64), order=order)
    assert status == LAUNCH_FAILURE
    assert "shuffle_after_exit" in failure and f"selftest_kernels.cu:{line_of('__shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1)')}" in failure
    assert re.search("exited", failure), failure


def test_barrier_at_two_call_sites_is_caught(lib):
    status, failure = run(lib, "barrier_at_two_sites", torch.zeros(128))
    assert status == LAUNCH_FAILURE and "barrier_at_two_sites" in failure
    first = SOURCE.index("  if (threadIdx.x < 64) {") + 2
    assert "two call sites" in failure and f":{first} " in failure and f":{first + 2} " in failure, failure


def test_deadlock_between_a_shuffle_and_a_barrier_is_caught(lib):
    status, failure = run(lib, "shuffle_against_barrier", torch.zeros(64))
    assert status == LAUNCH_FAILURE and "deadlock" in failure
    assert "lanes 0x0000ffff wait at __shfl_sync" in failure and "for lanes 0xffff0000" in failure
    assert f":{line_of('__shfl_sync(0xFFFFFFFFu, 1.0f, 0)')} " in failure


def test_launch_bounds_are_enforced(lib):
    out = torch.zeros(128)
    assert run(lib, "bounded", out, 64) == (SUCCESS, "")
    status, failure = run(lib, "bounded", out, 128)
    assert status == OUT_OF_RESOURCES and "__launch_bounds__(64)" in failure


def test_more_static_shared_memory_than_nvcc_allows_is_caught(lib):
    status, failure = run(lib, "too_much_static_shared", torch.zeros(32))
    assert status == LAUNCH_FAILURE and "__shared__ big" in failure and "48 KiB" in failure


def test_misaligned_vector_load_is_caught(lib):
    data = torch.arange(16, dtype=torch.float32)
    status, failure = run(lib, "misaligned_load", data, torch.zeros(1))
    assert status == LAUNCH_FAILURE and "misaligned address" in failure
    assert f":{line_of('__ldg(reinterpret_cast<const float4*>(p + 1))')} " in failure


def test_a_failed_launch_leaves_the_emulator_usable(lib):
    run(lib, "barrier_at_two_sites", torch.zeros(128))
    test_block_reduction_with_shuffles_and_shared_memory(lib, "random")
