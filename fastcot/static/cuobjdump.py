"""`cuobjdump`: finding it, running it, and reading `--dump-resource-usage`.

The copy bundled in Triton's NVIDIA backend is always there with triton; a CUDA toolkit's is
the fallback. It reads cubins and the fatbinaries inside a built extension alike.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path


@dataclasses.dataclass
class KernelUsage:
    arch: str
    name: str
    registers: int | None = None
    stack: int | None = None
    shared: int | None = None
    local: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None


def find_cuobjdump() -> Path | None:
    """triton's bundled cuobjdump first (always present with triton), then the toolkit's."""
    spec = importlib.util.find_spec("triton")
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "cuobjdump")
    if shutil.which("cuobjdump"):
        candidates.append(Path(shutil.which("cuobjdump")))
    candidates.append(Path("/usr/local/cuda/bin/cuobjdump"))
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def cuobjdump(tool: Path, path: Path, *flags: str) -> str:
    """`tool flags path`'s standard output; RuntimeError with its message when it fails."""
    done = subprocess.run([str(tool), *flags, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(flags)} {path} failed: {done.stderr.strip()}")
    return done.stdout


_ARCH = re.compile(r"^arch = (\w+)\s*$")
_FUNCTION = re.compile(r"^\s*Function (\S+):\s*$")
_FIELDS = re.compile(r"(\w+(?:\[\d+\])?):(\d+)")


def parse_resource_usage(text: str, arch: str | None = None) -> list[KernelUsage]:
    """Kernels from `cuobjdump --dump-resource-usage`; raises ValueError on a malformed entry.
    A bare cubin's listing names no arch: `arch` supplies it."""
    kernels: list[KernelUsage] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if match := _ARCH.match(line):
            arch = match.group(1)
        elif match := _FUNCTION.match(line):
            fields = dict(_FIELDS.findall(lines[i + 1])) if i + 1 < len(lines) else {}
            missing = {"REG", "STACK", "SHARED", "LOCAL"} - fields.keys()
            if arch is None or missing:
                raise ValueError(f"cuobjdump: cannot read the usage of {match.group(1)} (missing {sorted(missing)})")
            kernels.append(
                KernelUsage(
                    arch=arch,
                    name=match.group(1),
                    registers=int(fields["REG"]),
                    stack=int(fields["STACK"]),
                    shared=int(fields["SHARED"]),
                    local=int(fields["LOCAL"]),
                )
            )
    return kernels
