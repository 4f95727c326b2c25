"""The SIMT emulator: runs the CUDA sources of csrc/ on the CPU (docs/emulator.md).

translate.py rewrites the few CUDA constructs g++ cannot read, build.py compiles and caches
shared libraries, emulator.py is the Python interface to fastcot's kernels. The package is
imported by path (tests/simt_emu.py shows how); it is not part of the installed fastcot.
"""
