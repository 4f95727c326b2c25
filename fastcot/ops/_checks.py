"""Argument checks shared by the ops' public functions."""

from __future__ import annotations

import torch


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two non-empty tensors live in the same storage (an output that aliases an input)."""
    if torch.compiler.is_compiling():  # storages are not observable while tracing
        return False
    return a.numel() > 0 and b.numel() > 0 and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def check_buffer(name: str, t, *, shape, dtype, device, of: str = "x", shape_text: str | None = None,
                 not_aliasing: tuple = ()) -> None:
    """A caller-provided buffer (an `out=`, an in-place residual): right shape, dtype and device,
    contiguous, and sharing memory with none of `not_aliasing` (pairs of name and tensor)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have {shape_text or f'shape {list(shape)}'}, got {list(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have {of}'s dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but {of} is on {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    for other_name, other in not_aliasing:
        if other is not None and shares_memory(t, other):
            raise ValueError(f"{name} must not share memory with {other_name}")
