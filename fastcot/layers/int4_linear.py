"""`Int4Linear`: a drop-in `nn.Linear` replacement holding an int4 weight."""

from __future__ import annotations

import torch
from torch import nn

from fastcot import ops
from fastcot.quant.int4 import Int4Weight, quantize_int4


class Int4Linear(nn.Module):
    """`y = x @ W.T + b` with `W` stored as fastcot int4 (see `Int4Weight` for the layout).

    The packed tensors are buffers, so `.to(device)`, `.cuda()` and `state_dict()` work as
    for any module. Activations are float16/bfloat16 (float32 on CPU); `y` has x's dtype.

    Example::

        layer = fastcot.Int4Linear.from_linear(nn.Linear(4096, 4096).half().cuda())
        y = layer(torch.randn(8, 4096, dtype=torch.float16, device="cuda"))
    """

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(weight, Int4Weight):
            raise TypeError(f"weight must be a fastcot.Int4Weight, got {type(weight).__name__}")
        self.out_features, self.in_features = weight.shape
        self.group_size = weight.group_size
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.register_buffer("perm", weight.perm)
        self.register_buffer("bias", bias)
        self._weight = weight

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, symmetric: bool = False) -> "Int4Linear":
        """Quantize an `nn.Linear` (round to nearest, groups along in_features)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        weight = quantize_int4(linear.weight.detach(), group_size=group_size, symmetric=symmetric)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight, bias)

    @property
    def weight(self) -> Int4Weight:
        return self._weight

    def _apply(self, fn, recurse=True):
        # Buffers may be replaced (device or dtype moves): rebuild the weight view once here,
        # not on every forward.
        result = super()._apply(fn, recurse)
        self._weight = Int4Weight(
            qweight=self.qweight, scales=self.scales, zeros=self.zeros, perm=self.perm,
            group_size=self.group_size, shape=(self.out_features, self.in_features),
        )
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int4_matmul(x, self._weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )
