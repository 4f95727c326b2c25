"""Programmatic dependent launch (PDL): whether fastcot's kernels launch with it on a GPU.

On sm_90 and later a kernel launched with PDL starts while the kernel before it in the stream
finishes, streams what no earlier kernel writes (its weights), and waits (`griddepcontrol.wait`)
before it reads the previous kernel's output or writes anything. `FASTCOT_PDL=0` turns it off
(the C++ launchers of csrc/ read the same variable).
"""

from __future__ import annotations

import os


def pdl_enabled(arch: int) -> bool:
    """Whether launches on an sm_`arch` GPU (e.g. 90) use PDL."""
    return arch >= 90 and os.environ.get("FASTCOT_PDL", "1") != "0"
