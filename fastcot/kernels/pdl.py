"""Programmatic dependent launch (PDL, sm_90+): when fastcot's kernels use it, and the Triton side.

Decode runs many small dependent kernels; each pays a launch gap and ramp during which no bytes
move. A kernel launched with `launch_pdl=True` may start while the kernel before it on the stream
finishes: it streams what no earlier kernel writes (its weights) first, then `gdc_wait()` blocks
until the previous grid has completed and its writes are visible; reads of the previous kernel's
output and every global write come after the wait. `gdc_launch_dependents()` lets the next
kernel start early in turn. Without PDL both are no-ops, and a kernel compiled with them still
runs correctly when launched normally.

`FASTCOT_PDL=0` turns it off (the kernels are then compiled and launched without it); the C++
launchers of csrc/ (csrc/include/fastcot/launch.cuh) read the same variable the same way.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:  # Triton 3.3+; older ones never get USE_PDL (`pdl_enabled` is False)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None

__all__ = ["device_arch", "gdc_launch_dependents", "gdc_wait", "pdl_enabled", "prefetch_l2"]


def device_arch(device: torch.device) -> int | None:
    """SM version (`major * 10 + minor`, 90 for an H100) of a CUDA device; None for any other
    device (CPU tensors run through the interpreter, `meta` ones stand for no particular GPU)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def pdl_enabled(arch: int | None) -> bool:
    """Whether kernels built for SM version `arch` use PDL: sm_90 or newer (`griddepcontrol`),
    unless `FASTCOT_PDL=0`. Never for `arch` None (no CUDA device: the interpreter has no inline
    assembly)."""
    if arch is None or arch < 90 or gdc_wait is None:
        return False
    return os.environ.get("FASTCOT_PDL", "1") != "0"  # exactly as launch.cuh reads it


@triton.jit
def prefetch_l2(ptrs):
    """Start moving the memory at each of `ptrs` (a tensor of pointers) from DRAM into L2: no
    registers held, nothing to wait for. Before `gdc_wait` this streams what the first loads
    after it will read, where a load into registers cannot be placed (Triton's pipeliner issues
    its prologue loads right before the loop, after the wait)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)
