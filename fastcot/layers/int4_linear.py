"""`Int4Linear`: a drop-in `nn.Linear` replacement holding an int4 weight."""

from __future__ import annotations

import torch
from torch import nn

from fastcot import ops
from fastcot.quant.importers import from_gptq, to_gptq
from fastcot.quant.int4 import Int4Weight, fitting_group_size, quantize_int4

# What `state_dict()` holds for an Int4Linear: the GPTQ ("gptq_v2") tensors of its weight.
GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


class _Int4LinearFunction(torch.autograd.Function):
    """`x @ W.T + b` whose gradient flows to `x` only, through the dequantized weight (the
    int4 weight and the bias are frozen): adapters can be trained over an int4 base."""

    @staticmethod
    def forward(ctx, x, weight: Int4Weight, bias):
        ctx.weight = weight
        return ops.int4_matmul(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        w = ops.int4_dequantize(ctx.weight, grad_out.dtype)  # [N, K]
        return grad_out @ w, None, None


class Int4Linear(nn.Module):
    """`y = x @ W.T + b` with `W` stored as fastcot int4 (see `Int4Weight` for the layout).

    The packed tensors are buffers, so `.to(device)` and `.cuda()` work as for any module.
    Activations are float16/bfloat16 (float32 on CPU); `y` has x's dtype. Gradients reach
    the input (through the dequantized weight); the weight and bias stay frozen.

    `state_dict()` holds the weight in the GPTQ "gptq_v2" form (`qweight [K/8, N]`,
    `qzeros [G, N/8]`, `scales [G, N]`, `g_idx [K]`, and `bias`), a published layout that
    `fastcot.LLM`, `fastcot.integrations.transformers.load_pretrained` and GPTQ loaders read
    (with the `quantization_config` of `fastcot.integrations.transformers.quantization_config`).
    `load_state_dict` reads that form back, with this layer's `group_size`. A weight GPTQ
    cannot hold (GGUF Q4_1 minimums, N not a multiple of 8) raises when saved.

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
        self.register_buffer("bias", bias)
        self._set_weight(weight)

    def _set_weight(self, weight: Int4Weight) -> None:
        for name in ("qweight", "scales", "zeros", "perm", "mins"):
            self.register_buffer(name, getattr(weight, name))
        self._weight = weight

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, symmetric: bool = False) -> "Int4Linear":
        """Quantize an `nn.Linear` (round to nearest, groups along in_features).

        `group_size` is used when it divides in_features; otherwise the largest smaller
        supported size that does (64, 32), else one group per row (-1). The chosen size is
        `layer.group_size`. in_features must be a multiple of 8 (int4 packing).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        group_size = fitting_group_size(linear.in_features, group_size)
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
            group_size=self.group_size, shape=(self.out_features, self.in_features), mins=self.mins,
        )
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
            return _Int4LinearFunction.apply(x, self._weight, self.bias)
        return ops.int4_matmul(x, self._weight, self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        try:
            tensors = to_gptq(self._weight)
        except ValueError as err:
            raise ValueError(f"cannot save int4 layer {prefix.rstrip('.') or '(root)'!r}: {err}") from err
        for name, tensor in tensors.items():
            destination[prefix + name] = tensor
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        local = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix) and "." not in key[len(prefix):]}
        required = ("qweight", "qzeros", "scales") + (("bias",) if self.bias is not None else ())
        missing = [prefix + name for name in required if name not in local]
        if strict:
            unexpected_keys.extend(key for name, key in local.items() if name not in GPTQ_TENSORS + ("bias",))
        if missing:
            missing_keys.extend(missing)
            return
        tensors = {name: state_dict[local[name]] for name in GPTQ_TENSORS if name in local}
        # A shell built on the meta device takes the checkpoint's device.
        device = tensors["qweight"].device if self.qweight.is_meta else self.qweight.device
        try:
            weight = _import_gptq(tensors, self.group_size, device)
        except (TypeError, ValueError) as err:
            error_msgs.append(f"{prefix.rstrip('.') or '(root)'}: {err}")
            return
        if weight.shape != (self.out_features, self.in_features):
            error_msgs.append(
                f"{prefix.rstrip('.') or '(root)'}: checkpoint weight is {list(weight.shape)}, "
                f"layer is [{self.out_features}, {self.in_features}]"
            )
            return
        if "bias" in local:
            self.bias = state_dict[local["bias"]].detach().to(device)
        self._set_weight(weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


def _import_gptq(tensors: dict[str, torch.Tensor], group_size: int, device) -> Int4Weight:
    """`from_gptq` on "gptq_v2" tensors; zero points that are all 8 come back symmetric."""
    tensors = {name: t.detach().to(device) for name, t in tensors.items()}
    qzeros = tensors["qzeros"]
    symmetric = bool((qzeros == 0x88888888 - 2**32).all())  # every nibble 8
    return from_gptq(
        tensors["qweight"], qzeros, tensors["scales"], tensors.get("g_idx"),
        group_size=group_size, sym=symmetric, checkpoint_format="gptq_v2",
    )
