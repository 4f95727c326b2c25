"""Triton kernels, one file per kernel family. Launchers live in `fastcot.ops`."""
