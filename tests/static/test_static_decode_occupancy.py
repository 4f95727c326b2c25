"""The Triton decode launcher's table of resident programs per SM equals what `fastcot bench
static` reads from the compiled kernel (registers, shared memory) at every decode target row,
split and unsplit, so the split rule cannot go stale when the kernel changes.

Compiles in a subprocess without TRITON_INTERPRET (the interpreter replaces the kernels)."""

import json
import os
import subprocess
import sys

import pytest

from fastcot.ops.paged_attention import TRITON_DECODE_BLOCKS_PER_SM
from fastcot.static import cubins


@pytest.mark.skipif(cubins.find_cuobjdump() is None, reason="no cuobjdump (triton's NVIDIA backend or a CUDA toolkit)")
def test_triton_decode_blocks_per_sm_table_matches_the_compiled_kernel():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "fastcot", "bench", "static", "--json", "--backend", "triton",
               "--kernel", "paged_decode_attention"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["rows"]
    seen = set()
    for r in rows:
        assert r["error"] is None, r["error"]
        key = (int(r["arch"].removeprefix("sm_")), r["shape"]["kv_dtype"] == "fp8")
        assert TRITON_DECODE_BLOCKS_PER_SM[key] == r["blocks_per_sm"], (r["label"], r["arch"], r["config"])
        seen.add(key)
        # The split count the table gives fills whole waves at every target shape.
        assert r["wave_efficiency"] >= 0.9, (r["label"], r["arch"], r["config"])
    assert seen == set(TRITON_DECODE_BLOCKS_PER_SM)
