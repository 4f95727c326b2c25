"""`fastcot.ops.rms_norm`: RMSNorm with HF LlamaRMSNorm numerics, optionally fused with the residual add."""

from __future__ import annotations

import numbers

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_buffer, dense_input, unit_stride_rows

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HIDDEN_SIZE = 65536  # one row lives in the registers of one program
# Hidden sizes whose launch configurations are compiled ahead of time: Llama 3.2 1B/3B, 3.1 8B,
# 70B, and the 14336-wide rows of the 8B MLP.
SHIPPED_HIDDEN_SIZES = (2048, 3072, 4096, 8192, 14336)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    *,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`weight * (x * rsqrt(mean(x^2, -1) + eps)).to(x.dtype)` over the last dim, as HF's LlamaRMSNorm.

    With `residual`, the residual add of a Llama decoder layer is fused in front:
    `h = x + residual` (rounded to x's dtype) is written back into `residual` IN PLACE, the
    updated residual stream, and `rms_norm(h)` is returned. `x` itself is never modified.

    Args:
        x: `[..., H]` float16/bfloat16/float32, any number of leading dims.
        weight: `[H]` float tensor on x's device (normally of x's dtype).
        eps: added to the mean square before the reciprocal square root.
        residual: optional contiguous tensor of x's shape, dtype and device, updated in place.
        out: optional contiguous `[..., H]` tensor of x's dtype to write into.

    Returns:
        `[..., H]` in x's dtype (`out` when given). The mean square and scaling are float32;
        like HF, the normalized row is rounded to x's dtype before the weight multiply, whose
        product is rounded once more (a no-op for float32).

    Example::

        hidden = fastcot.ops.rms_norm(attn_out, post_attention_norm.weight, 1e-5, residual=residual)
    """
    x2d, weight, residual2d, out2d, result = _validate(x, weight, eps, residual, out)
    if x2d.shape[0] > 0:
        backend = _backend.resolve("rms_norm", x.device)
        if residual2d is None:
            torch.ops.fastcot.rms_norm(x2d, weight, out2d, float(eps), backend)
        else:
            torch.ops.fastcot.fused_add_rms_norm(x2d, residual2d, weight, out2d, float(eps), backend)
    return result


def _validate(x, weight, eps, residual, out):
    """Check every argument before any kernel runs; returns x as 2-D rows, the weight as the
    kernels read it, 2-D views of residual and out, and out."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have shape [..., H] with H >= 1, got {list(x.shape)}")
    h = x.shape[-1]
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {weight.dtype}")
    if tuple(weight.shape) != (h,):
        raise ValueError(f"weight must have shape [H] = [{h}], got {list(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    like_x = dict(shape=x.shape, dtype=x.dtype, device=x.device, shape_text=f"x's shape {list(x.shape)}")
    if residual is not None:
        # It is updated in place, so it must not alias x.
        check_buffer("residual", residual, **like_x, not_aliasing=(("x", x),))
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        check_buffer("out", out, **like_x, not_aliasing=(("x", x), ("residual", residual)))
    residual2d = None if residual is None else residual.view(-1, h)
    return unit_stride_rows(x.reshape(-1, h)), dense_input(weight), residual2d, out.view(-1, h), out


@torch.library.custom_op("fastcot::rms_norm", mutates_args=("out",))
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, eps: float, backend: str) -> None:
    """Registered op: `out[T, H] = rms_norm(x[T, H]) * weight` with the named backend."""
    if backend == "triton":
        rms_norm_triton(x, None, weight, out, eps)
    elif backend == "torch":
        out.copy_(reference.rms_norm(x, weight, eps)[0])
    else:
        raise _backend.BackendError(f"backend {backend!r} has no rms_norm kernel")


@_rms_norm_op.register_fake
def _(x, weight, out, eps, backend):
    return None


@torch.library.custom_op("fastcot::fused_add_rms_norm", mutates_args=("residual", "out"))
def _fused_add_rms_norm_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, eps: float, backend: str
) -> None:
    """Registered op: `residual += x` (rounded to its dtype), then `out = rms_norm(residual) * weight`."""
    if backend == "triton":
        rms_norm_triton(x, residual, weight, out, eps)
    elif backend == "torch":
        normed, h = reference.rms_norm(x, weight, eps, residual)
        residual.copy_(h)
        out.copy_(normed)
    else:
        raise _backend.BackendError(f"backend {backend!r} has no rms_norm kernel")


@_fused_add_rms_norm_op.register_fake
def _(x, residual, weight, out, eps, backend):
    return None


def launch_config(hidden_size: int) -> tuple[int, int]:
    """(BLOCK_H, num_warps) for a row of `hidden_size`: the whole row in one program, about 16
    float32 values per thread."""
    block_h = 1 << max(0, hidden_size - 1).bit_length()
    return block_h, min(16, max(1, block_h // 512))


def rms_norm_triton(x, residual, weight, out, eps: float, *, arch: int | None = None) -> None:
    """Launch the Triton kernel on 2-D `x [T, H]` (and `residual`) into `out [T, H]` (layouts checked).
    `arch`: the SM version to build for (default the device's), which decides PDL (`_backend.triton_pdl`)."""
    from fastcot.kernels.triton.rms_norm import _rms_norm_kernel

    t, h = x.shape
    if h > MAX_HIDDEN_SIZE:
        raise _backend.BackendError(
            f"backend 'triton' cannot run rms_norm: hidden size {h} exceeds {MAX_HIDDEN_SIZE} (one row per program)"
        )
    block_h, num_warps = launch_config(h)
    use_pdl = _backend.triton_pdl(x.device, arch)
    _rms_norm_kernel[(t,)](
        x_ptr=x, residual_ptr=x if residual is None else residual, weight_ptr=weight, out_ptr=out,
        H=h, stride_x=x.stride(0), stride_residual=0 if residual is None else residual.stride(0),
        stride_out=out.stride(0), eps=eps,
        BLOCK_H=block_h, HAS_RESIDUAL=residual is not None, USE_PDL=use_pdl,
        num_warps=num_warps, launch_pdl=use_pdl,
    )


def aot_specs():
    """Compile specs for the AOT check: every shipped row width, fp16 and bf16, with and without
    the fused residual add; sm_90 launches them with PDL (`pdl` variants, sm_90 only)."""
    from fastcot.kernels.aot import ARCHS, KernelSpec
    from fastcot.kernels.triton.rms_norm import _rms_norm_kernel

    specs = []
    configs = sorted({launch_config(h) for h in SHIPPED_HIDDEN_SIZES})
    for block_h, num_warps in configs:
        for dtype in ("fp16", "bf16"):
            for has_residual, pdl in ((False, False), (True, False), (False, True), (True, True)):
                specs.append(KernelSpec(
                    name=(f"rms_norm h{block_h} w{num_warps} {dtype}{' residual' if has_residual else ''}"
                          f"{' pdl' if pdl else ''}"),
                    fn=_rms_norm_kernel, num_warps=num_warps, num_stages=1, archs=(90,) if pdl else ARCHS,
                    signature={
                        "x_ptr": f"*{dtype}", "residual_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}",
                        "out_ptr": f"*{dtype}", "H": "i32", "stride_x": "i32", "stride_residual": "i32",
                        "stride_out": "i32", "eps": "fp32",
                    },
                    constexprs={"BLOCK_H": block_h, "HAS_RESIDUAL": has_residual, "USE_PDL": pdl},
                    aligned=("x_ptr", "residual_ptr", "weight_ptr", "out_ptr", "H", "stride_x",
                             "stride_residual", "stride_out"),
                ))
    return specs
