"""The compiled CUDA extension `fastcot._C` (built from csrc/ by setup.py), and its launchers.

Importing this module never fails and never touches the GPU: the extension is
loaded on first use, and `unavailable_reason()` says why it cannot serve calls
(not built, failed to import, or no CUDA device). The launchers here assert the
layout cheaply and pass raw pointers, sizes, dtype codes and the caller's
current stream; argument validation for users lives in `fastcot.ops`.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

_NOT_BUILT = (
    "fastcot._C was not built (no CUDA toolkit at install time, or FASTCOT_BUILD_CUDA=0); "
    "reinstall with FASTCOT_BUILD_CUDA=1 to build it or see why it cannot be"
)


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        # import_module, unlike `from fastcot import _C`, tells "absent" apart by e.name.
        module = importlib.import_module("fastcot._C")
    except ModuleNotFoundError as e:
        if e.name == "fastcot._C":
            return None, _NOT_BUILT
        return None, f"fastcot._C failed to import: {e}"
    except ImportError as e:  # e.g. an undefined symbol or a build for another Python
        return None, f"fastcot._C failed to import: {e}"
    return module, None


@functools.cache
def _device_count() -> int:
    # The CUDA runtime fixes its device list at initialization, so one query suffices.
    module, _ = _load()
    return module.device_count() if module is not None else 0


def extension() -> ModuleType | None:
    """The loaded `fastcot._C` module, or None when it cannot be imported."""
    return _load()[0]


def loaded() -> bool:
    """Whether `fastcot._C` imported (it may still see no device)."""
    return extension() is not None


def unavailable_reason() -> str | None:
    """Why the cuda backend cannot run kernels here, or None when it can."""
    module, reason = _load()
    if module is None:
        return reason
    if _device_count() == 0:
        return f"no CUDA device (fastcot._C loaded; CUDA says {module.device_error() or 'device count is 0'})"
    return None


def available() -> bool:
    """Whether `fastcot._C` loaded and sees at least one CUDA device."""
    return unavailable_reason() is None


def build_info() -> dict:
    """How the extension was built (arches, PTX, CUDA version) plus what it sees at runtime."""
    module, reason = _load()
    if module is None:
        return {"built": False, "reason": reason}
    return {
        "built": True,
        "path": module.__file__,
        **module.build_info(),
        "runtime_version": module.cuda_runtime_version(),
        "driver_version": module.cuda_driver_version(),
        "device_count": _device_count(),
    }


def _require(op: str) -> ModuleType:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cuda backend cannot run {op}: {reason}")
    return extension()


def _dtype_code(module: ModuleType, dtype: torch.dtype, name: str) -> int:
    codes = {
        torch.float32: module.DTYPE_FLOAT32,
        torch.float16: module.DTYPE_FLOAT16,
        torch.bfloat16: module.DTYPE_BFLOAT16,
    }
    if dtype not in codes:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {dtype}")
    return codes[dtype]


def _check_tensor(t: torch.Tensor, name: str, device: torch.device, shape: tuple, dtype=None) -> None:
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (strides {t.stride()})")


def int4_dequantize(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    group_size: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """Dequantize fastcot's packed int4 weight into `out` `[N, K]` on the current stream.

    `qweight` int32 `[N, K // 8]`; `scales`, `zeros` `[G, N]` with `G = K // group_size`
    (`group_size` -1: one group), fp16/bf16/fp32, `zeros` None meaning the symmetric zero
    point 8; `perm` int32 `[K]` or None. `out` fp16/bf16/fp32 on the same CUDA device.
    Same result as `fastcot.kernels.reference.int4_dequantize` bit for bit. Returns `out`.
    """
    module = _require("int4_dequantize")
    if out.device.type != "cuda":
        raise ValueError(f"out: expected a CUDA tensor, got {out.device}")
    if out.dim() != 2:
        raise ValueError(f"out: expected [N, K], got shape {list(out.shape)}")
    n, k = out.shape
    if k % 8 != 0:
        raise ValueError(f"out: K must be a multiple of 8, got K={k}")
    if group_size != -1 and (group_size <= 0 or k % group_size != 0):
        raise ValueError(f"group_size: expected -1 or a positive divisor of K={k}, got {group_size}")
    groups = 1 if group_size == -1 else k // group_size
    _check_tensor(out, "out", out.device, (n, k))
    _check_tensor(qweight, "qweight", out.device, (n, k // 8), torch.int32)
    _check_tensor(scales, "scales", out.device, (groups, n))
    if zeros is not None:
        _check_tensor(zeros, "zeros", out.device, (groups, n), scales.dtype)
    if perm is not None:
        _check_tensor(perm, "perm", out.device, (k,), torch.int32)

    module.int4_dequantize(
        qweight=qweight.data_ptr(),
        scales=scales.data_ptr(),
        zeros=zeros.data_ptr() if zeros is not None else 0,
        perm=perm.data_ptr() if perm is not None else 0,
        out=out.data_ptr(),
        n=n,
        k=k,
        group_size=group_size,
        out_dtype=_dtype_code(module, out.dtype, "out"),
        scale_dtype=_dtype_code(module, scales.dtype, "scales"),
        device=out.device.index,
        stream=torch.cuda.current_stream(out.device).cuda_stream,
    )
    return out
