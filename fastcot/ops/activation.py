"""`fastcot.ops.silu_and_mul`: the gated-MLP activation `silu(gate) * up` over a fused gate/up projection."""

from __future__ import annotations

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_buffer, unit_stride_rows

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK = 1024  # columns per program; the compiled code does not depend on I
NUM_WARPS = 4


def silu_and_mul(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """`silu(x[..., :I]) * x[..., I:]`: gate first, then up, as vLLM lays out the fused projection.

    Args:
        x: `[..., 2*I]` float16/bfloat16/float32, any number of leading dims.
        out: optional contiguous `[..., I]` tensor of x's dtype to write into.

    Returns:
        `[..., I]` in x's dtype (`out` when given), computed in float32 and rounded once.
        (HF's `act_fn(gate) * up` rounds `silu(gate)` to the activation dtype first; the two
        agree to within one rounding of that dtype.)

    Example::

        h = fastcot.ops.silu_and_mul(fastcot.ops.int4_matmul(x, gate_up_proj))
    """
    x2d, out2d, result = _validate(x, out)
    if x2d.shape[0] > 0 and x2d.shape[1] > 0:
        backend = _backend.resolve("silu_and_mul", x.device)
        torch.ops.fastcot.silu_and_mul(x2d, out2d, backend)
    return result


def _validate(x, out):
    """Check every argument before any kernel runs; returns 2-D views of x and out."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] % 2 != 0:
        raise ValueError(f"x must have shape [..., 2*I] (an even last dim), got {list(x.shape)}")
    i = x.shape[-1] // 2
    out_shape = (*x.shape[:-1], i)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    else:
        check_buffer("out", out, shape=out_shape, dtype=x.dtype, device=x.device, not_aliasing=(("x", x),))
    return unit_stride_rows(x.reshape(-1, 2 * i)), out.view(-1, i), out


@torch.library.custom_op("fastcot::silu_and_mul", mutates_args=("out",))
def _silu_and_mul_op(x: torch.Tensor, out: torch.Tensor, backend: str) -> None:
    """Registered op: `out[T, I] = silu(x[T, :I]) * x[T, I:]` with the named backend."""
    if backend == "triton":
        silu_and_mul_triton(x, out)
    elif backend == "torch":
        out.copy_(reference.silu_and_mul(x))
    else:
        raise _backend.BackendError(f"backend {backend!r} has no silu_and_mul kernel")


@_silu_and_mul_op.register_fake
def _(x, out, backend):
    return None


def silu_and_mul_triton(x, out, *, arch: int | None = None) -> None:
    """Launch the Triton kernel on 2-D `x [T, 2*I]` into `out [T, I]` (layouts already checked).
    `arch`: the SM version to build for (default the device's), which decides PDL (`_backend.triton_pdl`)."""
    from fastcot.kernels.triton.activation import _silu_and_mul_kernel

    t, i = out.shape
    use_pdl = _backend.triton_pdl(x.device, arch)
    _silu_and_mul_kernel[(t, -(-i // BLOCK))](
        x_ptr=x, out_ptr=out, I=i, stride_x=x.stride(0), stride_out=out.stride(0),
        BLOCK=BLOCK, USE_PDL=use_pdl, num_warps=NUM_WARPS, launch_pdl=use_pdl,
    )


def aot_specs():
    """Compile specs for the AOT check: fp16 and bf16. One spec per dtype covers every shipped
    width (Llama MLP widths 8192, 14336, 28672): the code depends on I only through its
    divisibility by 16, which the spec assumes. Each also with PDL, as sm_90 launches it (sm_90 only)."""
    from fastcot.kernels.aot import ARCHS, KernelSpec
    from fastcot.kernels.triton.activation import _silu_and_mul_kernel

    return [
        KernelSpec(
            name=f"silu_and_mul block{BLOCK} w{NUM_WARPS} {dtype}{' pdl' if pdl else ''}",
            fn=_silu_and_mul_kernel, num_warps=NUM_WARPS, num_stages=1, archs=(90,) if pdl else ARCHS,
            signature={
                "x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "I": "i32", "stride_x": "i32", "stride_out": "i32",
            },
            constexprs={"BLOCK": BLOCK, "USE_PDL": pdl},
            aligned=("x_ptr", "out_ptr", "I", "stride_x", "stride_out"),
        )
        for dtype in ("fp16", "bf16") for pdl in (False, True)
    ]
