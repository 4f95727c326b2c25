"""`fastcot bench static`: speed limits of the hot kernels read from their SASS, without a GPU.

Each hot kernel is compiled for sm_80 and sm_90 exactly as its launcher would launch it at the
target shapes (autotuning off); `cuobjdump` gives its registers, shared memory and SASS; the
SASS gives the main loop's instruction mix and latency chain; `model` turns those into a
*predicted* fraction of copy bandwidth. Nothing here runs a kernel: every percentage is a
model output (docs/static_report.md states the model and its assumptions).
"""
