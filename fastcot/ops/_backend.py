"""Backend selection: which implementation (`cuda`, `triton`, `torch`) serves an op call.

Order of precedence: the innermost `fastcot.backend(...)` context, then the `FASTCOT_BACKEND`
environment variable, then `auto`. `auto` picks the fastest verified implementation for the
tensors' device: `torch` on CPU; on CUDA the per-op choice in `AUTO_ON_CUDA`. An explicit
choice that cannot serve a call raises `BackendError` saying why; nothing falls through.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

BACKENDS = ("auto", "cuda", "triton", "torch")

# Each op's implementations, and what `auto` picks on CUDA. A CUDA kernel becomes the auto
# choice only after a GPU measurement showed it faster (recorded in benchmarks/results/).
IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "int4_matmul": ("cuda", "triton", "torch"),
    "int4_dequantize": ("cuda", "triton", "torch"),
    "write_kv_cache": ("triton", "torch"),
    "paged_decode_attention": ("cuda", "triton", "torch"),
    "cascade_decode_attention": ("triton", "torch"),
    "paged_prefill_attention": ("triton", "torch"),
    "rms_norm": ("triton", "torch"),
    "rotary_embedding": ("triton", "torch"),
    "silu_and_mul": ("triton", "torch"),
}
# The csrc kernels (cuda) are compiled and checked here but have not been run on a GPU, so
# auto never picks them: they are reached only by asking for "cuda" explicitly.
AUTO_ON_CUDA: dict[str, str] = {
    "int4_matmul": "triton",
    "int4_dequantize": "triton",
    "write_kv_cache": "triton",
    "paged_decode_attention": "triton",
    "cascade_decode_attention": "triton",
    "paged_prefill_attention": "triton",
    "rms_norm": "triton",
    "rotary_embedding": "triton",
    "silu_and_mul": "triton",
}

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastcot_backend", default=None)


class BackendError(RuntimeError):
    """The requested backend cannot serve this call (missing kernel, device, or interpreter)."""


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def backend(name: str):
    """Select the backend for fastcot ops called inside the block.

    Example::

        with fastcot.backend("triton"):
            y = fastcot.ops.int4_matmul(x, w)
    """
    token = _override.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _override.reset(token)


def requested_backend() -> str:
    """The backend asked for by the context or `FASTCOT_BACKEND` (may be `auto`)."""
    name = _override.get()
    if name is not None:
        return name
    return _check_name(os.environ.get("FASTCOT_BACKEND", "auto").strip().lower() or "auto", "FASTCOT_BACKEND")


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_interpreted(device: torch.device) -> bool:
    """Whether Triton kernels on `device` run through the interpreter (CPU tensors). It has no
    bfloat16 arithmetic: a dot of bfloat16 operands multiplies their raw bits as integers, so
    launchers then ask the kernels for float32 dots (exact products, as on tensor cores).
    `meta` tensors stand for GPU ones (the static report traces launchers on them)."""
    return device.type == "cpu"


def triton_pdl(device: torch.device, arch: int | None = None) -> bool:
    """Whether a Triton kernel launched on `device`'s tensors, built for SM version `arch`
    (default the device's; none off CUDA), uses programmatic dependent launch
    (`fastcot.kernels.pdl`): sm_90+ unless `FASTCOT_PDL=0`, never under the interpreter (no
    inline assembly there). The static report passes its target's `arch` for `meta` tensors."""
    from fastcot.kernels.pdl import device_arch, pdl_enabled

    return pdl_enabled(device_arch(device) if arch is None else arch) and not triton_interpreted(device)


def unavailable_reason(op: str, name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run `op` on `device`, or None if it can."""
    if name == "torch":
        return None
    if name not in IMPLEMENTATIONS[op]:
        return f"fastcot has no {name} kernel for {op} yet"
    if name == "triton":
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreter_enabled():
            return None
        return (
            f"Triton kernels need CUDA tensors (got {device.type}); on CPU they run only under "
            "the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)"
        )
    if name == "cuda":
        from fastcot.kernels import cuda

        if device.type != "cuda" and not (device.type == "cpu" and cuda.emulating()):
            return f"the cuda backend needs CUDA tensors, got {device.type}"

        return cuda.unavailable_reason()
    return f"unknown backend {name!r}"


# Under torch.compile the choice is made once at trace time and baked into the graph.
@torch.compiler.assume_constant_result
def resolve(op: str, device: torch.device) -> str:
    """The concrete backend that will run `op` for tensors on `device`."""
    name = requested_backend()
    if name == "auto":
        return AUTO_ON_CUDA[op] if device.type == "cuda" else "torch"
    reason = unavailable_reason(op, name, device)
    if reason is not None:
        raise BackendError(f"backend {name!r} cannot run {op}: {reason}")
    return name
