"""Argument checks shared by the ops' public functions, and the layouts tensors reach kernels in.

The kernels index their tensors as dense arrays; only the strides a launcher passes explicitly
(row strides of activations, of `out`, of block tables) are free. So every op passes each
tensor argument through one of these at its public boundary, before any backend is chosen:

- `dense_input`: a tensor the kernel only reads and indexes as dense row-major (index and
  metadata tensors, a bias, a norm weight, a position list). Any other layout is replaced by
  a contiguous copy: these are small, and the caller cannot tell.
- `unit_stride_rows`: an activation the kernel reads with free strides except along its last
  dim (`x`, `q`, `key`): copied only when its last dim is not contiguous.
- `check_written` (and `check_buffer`, which calls it): a tensor the op writes (`out=`, a KV
  cache, an in-place residual). It is never copied, since the caller would not see writes to a
  copy: a non-contiguous one is refused with a ValueError naming it.
"""

from __future__ import annotations

import torch


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two non-empty tensors live in the same storage (an output that aliases an input)."""
    if torch.compiler.is_compiling():  # storages are not observable while tracing
        return False
    return a.numel() > 0 and b.numel() > 0 and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def dense_input(t: torch.Tensor | None) -> torch.Tensor | None:
    """A read-only tensor as dense row-major: itself if it is already, else a contiguous copy."""
    return None if t is None else t.contiguous()


def unit_stride_rows(t: torch.Tensor) -> torch.Tensor:
    """A read-only activation with unit stride along its last dim (other strides stay free):
    itself if it has one, else a contiguous copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def check_written(name: str, t: torch.Tensor, layout: str = "") -> None:
    """A tensor the op writes in place must be contiguous: a copy would take the writes away."""
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous{' ' + layout if layout else ''} (it is written in place, "
                         f"so it is never copied); got shape {list(t.shape)} with strides {list(t.stride())}")


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
    check_written(name, t)
    for other_name, other in not_aliasing:
        if other is not None and shares_memory(t, other):
            raise ValueError(f"{name} must not share memory with {other_name}")
