"""Pure-torch reference implementations: ground truth for tests, the CPU path and benchmark checks.

Written for clarity, not speed. Each function takes the same raw tensors as the kernels
(no wrapper objects), computes in float32 or wider, and rounds once to the output dtype.
"""

from __future__ import annotations

import torch

_NIBBLE_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_int4_rows(qweight: torch.Tensor) -> torch.Tensor:
    """Unpack fastcot's packed layout: int32 `[N, K // 8]` -> int32 `[N, K]` with values 0..15.

    Nibble j (bits 4j..4j+3, least significant first) of `qweight[n, w]` is `q[n, 8w + j]`.
    """
    shifts = _NIBBLE_SHIFTS.to(qweight.device)
    q = (qweight.unsqueeze(-1) >> shifts) & 0xF
    return q.reshape(qweight.shape[0], -1)


def pack_int4_rows(q: torch.Tensor) -> torch.Tensor:
    """Inverse of `unpack_int4_rows`: integer `[N, K]` (0..15, K % 8 == 0) -> int32 `[N, K // 8]`."""
    n, k = q.shape
    q = q.to(torch.int64).reshape(n, k // 8, 8)
    shifts = _NIBBLE_SHIFTS.to(device=q.device, dtype=torch.int64)
    words = (q << shifts).sum(dim=-1)
    # Nibble 7 can set bit 31: wrap into int32's range instead of overflowing the cast.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def int4_dequantize(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize fastcot's int4 layout to a float `[N, K]` matrix in input-channel order.

    `qweight` int32 `[N, K // 8]`; `scales`, `zeros` `[G, N]` (zeros None means the symmetric
    zero point 8); `perm` int32 `[K]` or None (stored column j is input channel `perm[j]`);
    `group_size` -1 means one group per row. Computed in float32 (float64 if asked for),
    rounded once to `dtype`.
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    q = unpack_int4_rows(qweight).to(compute)
    n, k = q.shape
    gs = k if group_size == -1 else group_size
    group_of_col = torch.arange(k, device=q.device) // gs
    scale = scales.to(compute).t()[:, group_of_col]
    zero = 8.0 if zeros is None else zeros.to(compute).t()[:, group_of_col]
    w = (q - zero) * scale
    if perm is not None:
        w_orig = torch.empty_like(w)
        w_orig[:, perm.long()] = w
        w = w_orig
    return w.to(dtype)


def int4_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`x @ W.T + bias` with `W` from `int4_dequantize`; `x` `[..., K]` -> `[..., N]` in x's dtype.

    Accumulates in `compute_dtype` (float32 by default; float64 for test ground truth).
    """
    w = int4_dequantize(qweight, scales, zeros, perm, group_size, compute_dtype)
    y = x.to(compute_dtype) @ w.t()
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(x.dtype)
