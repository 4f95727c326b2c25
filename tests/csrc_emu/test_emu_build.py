"""tools/simt/build.py: where it finds its tools, and why it says it cannot build."""

from __future__ import annotations

import pytest
from simt_emu import build, emulator


@pytest.fixture
def fresh_toolchain():
    build.toolchain.cache_clear()
    yield
    build.toolchain.cache_clear()


def test_a_missing_compiler_is_named(fresh_toolchain, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-g++")
    with pytest.raises(build.EmulatorUnavailable, match="'no-such-g\\+\\+' is not on PATH"):
        build.toolchain()


def test_missing_cuda_headers_say_where_they_were_looked_for(monkeypatch):
    monkeypatch.setattr(build, "REQUIRED_HEADERS", ("no_such_cuda_header.h",))
    with pytest.raises(build.EmulatorUnavailable, match=r"CUDA_HOME.*/usr/local/cuda.*nvidia/\*/include"):
        build.cuda_include_dirs()


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant: expected one of"):
        build.build_library("x", cuda_root=build.HERE, cuda_units=[], variant="tsan")


@pytest.mark.skipif(emulator.unavailable_reason() is not None, reason=f"{emulator.unavailable_reason()}")
def test_an_unchanged_tree_reuses_its_library():
    first = emulator.build_fastcot("plain")
    mtime = first.stat().st_mtime_ns
    assert emulator.build_fastcot("plain") == first and first.stat().st_mtime_ns == mtime
    assert first.parent.parent == build.cache_dir()
