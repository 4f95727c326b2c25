"""Gradients for fastcot's fused forward-only ops when they run inside other stacks' models."""

from __future__ import annotations

import torch


class _RecomputeBackward(torch.autograd.Function):
    """Forward through a fused fastcot op; backward through its torch reference, recomputed."""

    @staticmethod
    def forward(ctx, fused, reference_fn, *inputs):
        ctx.reference_fn = reference_fn
        ctx.save_for_backward(*inputs)
        return fused(*inputs)

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_(needs) for t, needs in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(ctx.reference_fn(*inputs), wanted, grad))
        return (None, None, *(next(grads) if t.requires_grad else None for t in inputs))


def differentiable(fused, reference_fn, *inputs: torch.Tensor) -> torch.Tensor:
    """`fused(*inputs)`; when a gradient is wanted, its backward is that of `reference_fn(*inputs)`
    (the same math in torch ops), recomputed from the saved inputs."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _RecomputeBackward.apply(fused, reference_fn, *inputs)
    return fused(*inputs)
