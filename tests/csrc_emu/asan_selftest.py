"""Child process of test_emu_asan.py: runs one selftest_kernels.cu scenario from the
AddressSanitizer build (started with libasan preloaded, see build.asan_environment()).

    python tests/csrc_emu/asan_selftest.py clean | global-read | shared-write

`clean` runs correct kernels (shuffles, static and dynamic shared memory, several blocks) and
must exit 0; the others must be stopped by AddressSanitizer.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simt_emu import build_selftests, emulator  # noqa: E402


def main(scenario: str) -> int:
    lib = emulator.load(build_selftests("asan"))
    assert lib.simt_is_asan() == 1, "not the AddressSanitizer build"
    lib.simt_set_workers(2)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    if scenario == "clean":
        values = torch.rand(5000)
        sums = torch.zeros(5)
        assert lib.simt_test_block_reduce(ptr(values), ptr(sums), 5000, 5, 128) == 0
        assert abs(sums.double().sum().item() - values.double().sum().item()) < 1e-2
        out = torch.zeros(3 * 64, dtype=torch.int32)
        assert lib.simt_test_neighbour_read(ptr(out), 3, 64, 1) == 0
        reversed_ = torch.zeros(64 * 64)
        assert lib.simt_test_dynamic_reverse(ptr(reversed_), 64, 64 * 64 * 4, 0) == 0
        assert torch.equal(reversed_, torch.arange(64 * 64 - 1, -1, -1, dtype=torch.float32))
        print("clean")
        return 0
    out = torch.zeros(64)
    if scenario == "global-read":
        data = torch.rand(64)  # exactly 64 floats: data[64] is outside the allocation
        lib.simt_test_read_past_end(ptr(data), ptr(out), 64)
    elif scenario == "shared-write":
        lib.simt_test_write_past_shared(ptr(out))
    print(f"{scenario}: AddressSanitizer did not stop the kernel")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
