"""Drawing random op inputs for the randomized differential tests: values, memory layouts, and
the checks every case shares (reference comparison, untouched inputs, poisoned outputs)."""

from __future__ import annotations

import contextlib
import random

import torch
from helpers import TOLERANCE, mismatch_report

FP8 = torch.float8_e4m3fn
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Draw:
    """A seeded source of configurations and tensors; records what it drew for the report."""

    def __init__(self, seed: int, device: torch.device):
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.device = device
        self.drawn: dict = {}

    # --- plain choices ---------------------------------------------------------------------
    def choice(self, name: str, options):
        value = self.rng.choice(list(options))
        self.drawn[name] = value
        return value

    def randint(self, name: str, lo: int, hi: int) -> int:
        value = self.rng.randint(lo, hi)
        self.drawn[name] = value
        return value

    def coin(self, name: str, p: float = 0.5) -> bool:
        value = self.rng.random() < p
        self.drawn[name] = value
        return value

    def describe(self) -> str:
        return ", ".join(f"{k}={str(v).removeprefix('torch.')}" for k, v in self.drawn.items())

    # --- tensors -----------------------------------------------------------------------------
    def randn(self, shape, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
        t = torch.randn(tuple(shape), generator=self.gen) * scale
        return t.to(dtype).to(self.device)

    def rand(self, shape) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=self.gen).to(self.device)

    def randint_tensor(self, lo: int, hi: int, shape, dtype=torch.int64) -> torch.Tensor:
        return torch.randint(lo, hi, tuple(shape), generator=self.gen).to(dtype).to(self.device)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen).to(self.device)

    def layout(self, name: str, t: torch.Tensor, *, fill=None, kinds=None) -> torch.Tensor:
        """`t`'s values in a randomly drawn memory layout: contiguous, at a storage offset,
        rows padded (the last dim a slice of a wider one), every other element of one dim,
        dims transposed in memory, or (1-D, if listed in `kinds`) broadcast from one element,
        which changes the values. Memory around the view holds `fill` (NaN for floats), so a
        kernel that ignores strides reads it."""
        options = ["contiguous", "offset", "strided"] + (["rows", "transposed"] if t.dim() >= 2 else [])
        kind = self.choice(f"{name}_layout", [k for k in options if kinds is None or k in kinds]
                           + [k for k in (kinds or ()) if k == "broadcast"])
        if fill is None:
            fill = float("nan") if t.is_floating_point() else -(2**20)
        shape = list(t.shape)
        if kind == "contiguous" or t.dim() == 0:
            return t.clone()
        if kind == "broadcast":
            return t[:1].clone().expand(shape)
        if kind == "offset":
            buf = torch.full((t.numel() + 3,), fill, dtype=t.dtype, device=t.device)
            view = buf[3:].view(shape)
        elif kind == "rows":
            pad = self.rng.randint(1, 5)
            buf = torch.full(shape[:-1] + [shape[-1] + pad], fill, dtype=t.dtype, device=t.device)
            start = self.rng.randint(0, pad)
            view = buf[..., start : start + shape[-1]]
        elif kind == "strided":
            dim = self.rng.randrange(t.dim())
            big = list(shape)
            big[dim] = 2 * shape[dim]
            buf = torch.full(big, fill, dtype=t.dtype, device=t.device)
            view = buf[(slice(None),) * dim + (slice(1, None, 2),)]
        else:  # transposed: the dims lie in reverse order in memory
            perm = list(range(t.dim()))[::-1]
            buf = torch.full([shape[i] for i in perm], fill, dtype=t.dtype, device=t.device)
            view = buf.permute(perm)
        view.copy_(t)
        return view

    def poisoned_out(self, name: str, shape, dtype) -> torch.Tensor | None:
        """None (the op allocates) or a NaN-filled buffer the op must fully overwrite."""
        if not self.coin(f"{name}_given"):
            return None
        fill = float("nan") if dtype.is_floating_point else -(2**20)
        return torch.full(tuple(shape), fill, dtype=dtype, device=self.device)


# --- checks ------------------------------------------------------------------------------------


def tolerance(dtype: torch.dtype, magnitude: float) -> dict:
    """The dtype's tolerance (DESIGN.md §4), its absolute part scaled by the result's magnitude."""
    tol = TOLERANCE[torch.float16 if dtype == FP8 else dtype]
    return dict(atol=tol["atol"] * max(1.0, magnitude), rtol=tol["rtol"])


def check_close(d: Draw, what: str, actual: torch.Tensor, expected: torch.Tensor, dtype, magnitude=None) -> None:
    assert actual.shape == expected.shape, (
        f"{what}: shape {list(actual.shape)} != {list(expected.shape)} [{d.describe()}]")
    if magnitude is None:
        magnitude = expected.abs().max().item() if expected.numel() else 1.0
    report = mismatch_report(actual.cpu(), expected.cpu(), **tolerance(dtype, magnitude))
    assert report is None, f"{what}: {report} [{d.describe()}]"


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that comparisons see -0, NaN payloads and fp8 codes."""
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(views[t.element_size()]).cpu()


def check_identical(d: Draw, what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        f"{what}: {actual.dtype}{list(actual.shape)} != {expected.dtype}{list(expected.shape)} [{d.describe()}]")
    diff = bits(actual) != bits(expected)
    if diff.any():
        first = tuple(int(i) for i in diff.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(diff.sum())}/{diff.numel()} elements differ bitwise; first at {first}: "
            f"got {actual[first].item()!r}, expected {expected[first].item()!r} [{d.describe()}]")


class Untouched:
    """Snapshots of read-only inputs; `check()` asserts none was written."""

    def __init__(self, d: Draw, **tensors):
        self.d = d
        self.saved = {k: (v, v.clone()) for k, v in tensors.items() if isinstance(v, torch.Tensor)}

    def check(self) -> None:
        for name, (now, before) in self.saved.items():
            check_identical(self.d, f"{name} (a read-only input) was modified", now, before)


@contextlib.contextmanager
def raises_naming(d: Draw, exc_type, name: str):
    """The op refuses a bad argument with `exc_type`, its message naming the argument."""
    try:
        yield
    except exc_type as e:
        assert name in str(e), f"error does not name {name!r}: {e} [{d.describe()}]"
    else:
        raise AssertionError(f"no {exc_type.__name__} for a non-contiguous {name} [{d.describe()}]")


def non_contiguous(t: torch.Tensor) -> torch.Tensor | None:
    """A non-contiguous tensor of t's shape and dtype (written arguments must refuse it), or
    None when t is empty or has no dim longer than 1 (then every layout counts as contiguous)."""
    dims = [i for i, size in enumerate(t.shape) if size > 1]
    if not dims or t.numel() == 0:
        return None
    shape = list(t.shape)
    shape[dims[-1]] *= 2
    buf = torch.zeros(shape, dtype=t.dtype, device=t.device)
    return buf[(slice(None),) * dims[-1] + (slice(None, None, 2),)]
