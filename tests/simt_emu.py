"""The SIMT emulator package (tools/simt) for tests: `from simt_emu import emulator, build`.

tools/ is not installed with fastcot, so the package is imported by path, once, under the
name `fastcot_simt`. Tests that need the emulator skip with `emulator.unavailable_reason()`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tools" / "simt"


def _package():
    if "fastcot_simt" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fastcot_simt", PACKAGE / "__init__.py",
                                                      submodule_search_locations=[str(PACKAGE)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["fastcot_simt"] = module
        spec.loader.exec_module(module)
    return sys.modules["fastcot_simt"]


_package()
build = importlib.import_module("fastcot_simt.build")
emulator = importlib.import_module("fastcot_simt.emulator")
translate = importlib.import_module("fastcot_simt.translate")

SELFTEST_DIR = Path(__file__).resolve().parent / "csrc_emu"


def build_selftests(variant: str = "plain") -> Path:
    """tests/csrc_emu/selftest_kernels.cu built into an emulator library."""
    return build.build_library("selftest", cuda_root=SELFTEST_DIR, cuda_units=[SELFTEST_DIR / "selftest_kernels.cu"],
                               variant=variant)
