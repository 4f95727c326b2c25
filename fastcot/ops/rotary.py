"""`fastcot.ops.rotary_embedding`: HF Llama rotary embedding of q and k, with Llama-3 and linear rope scaling."""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from fractions import Fraction

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_buffer, dense_input, unit_stride_rows

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
POSITION_DTYPES = (torch.int32, torch.int64)
ROPE_TYPES = ("default", "linear", "llama3")
# Head dims whose launch configurations are compiled ahead of time.
SHIPPED_HEAD_DIMS = (64, 128)
NUM_WARPS = 4


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    head_dim: int,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    out_q: torch.Tensor | None = None,
    out_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by their tokens' positions: HF Llama's `x * cos + rotate_half(x) * sin`.

    Out of place: q and k are read, the rotated copies are written to `out_q`, `out_k` (new
    tensors when not given). The whole head dim rotates, its first half paired with its second
    ("rotate_half", neox style).

    Args:
        positions: `[T]` int32/int64, the position of each token.
        q: `[T, Hq, D]` float16/bfloat16/float32; token and head strides are free (e.g. a view
            of a fused qkv projection), the last dim must be contiguous or is copied.
        k: `[T, Hkv, D]` of q's dtype and device.
        head_dim: D, a positive even number.
        rope_theta: the frequency base (config.json's `rope_theta`).
        rope_scaling: config.json's `rope_scaling`: None, `{"rope_type": "linear", "factor"}`
            or `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}` (Llama 3.1/3.2).
        out_q, out_k: optional contiguous tensors of q's and k's shapes and dtype, sharing no
            memory with q or k.

    Returns:
        `(q_rot, k_rot)` in q's dtype (`out_q`, `out_k` when given).

    Numerics: the frequencies are `rope_inv_freq(...)`, bit for bit those of transformers. The
    cos/sin are computed in the kernel from the positions (no cache, no position limit) with
    the angle `position * inv_freq` kept exact: HF rounds that angle to float32, which at
    position 131000 is off by up to 0.004 rad; here the error is below 1e-7 rad at any int32
    position. The rotation is float32, rounded once.

    The first call for a configuration and device builds two `[D/2]` tables on the device: make
    it (or `rope_inv_freq(..., device=...)`) before capturing a CUDA graph.

    Example::

        q, k = fastcot.ops.rotary_embedding(positions, q, k, head_dim=128, rope_theta=500000.0,
                                            rope_scaling=config["rope_scaling"])
    """
    positions, q3, k3, out_q, out_k = _validate(positions, q, k, head_dim, rope_theta, rope_scaling, out_q, out_k)
    if q.shape[0] > 0:
        inv_freq, turns = _rope_tables(head_dim, rope_theta, rope_scaling, q.device)
        backend = _backend.resolve("rotary_embedding", q.device)
        torch.ops.fastcot.rotary_embedding(positions, q3, k3, inv_freq, turns, out_q, out_k, backend)
    return out_q, out_k


# --- frequencies -----------------------------------------------------------------------------

_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def rope_inv_freq(
    head_dim: int, rope_theta: float = 10000.0, rope_scaling: dict | None = None, device=None
) -> torch.Tensor:
    """The `[head_dim / 2]` float32 inverse frequencies, cached per configuration and device.

    Computed on the CPU in float32 with transformers' operations in transformers' order
    (`_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
    `_compute_llama3_parameters`), so they equal its `inv_freq` bit for bit. The returned
    tensor is shared: do not modify it.

    The first call for a configuration and device copies this table and the kernel's to the
    device; call it once before capturing a CUDA graph (a warm-up forward does the same).
    """
    return _rope_tables(head_dim, rope_theta, rope_scaling, device)[0]


def _rope_tables(head_dim, rope_theta, rope_scaling, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inv_freq float32, turns int64), both `[head_dim / 2]` on `device`, cached."""
    key = (*_config_key(head_dim, rope_theta, rope_scaling), torch.device("cpu" if device is None else device))
    if key not in _tables:
        inv_freq = _compute_inv_freq(head_dim, rope_theta, rope_scaling)
        _tables[key] = (inv_freq.to(key[-1]), _turns(inv_freq).to(key[-1]))
    return _tables[key]


def _config_key(head_dim, rope_theta, rope_scaling) -> tuple:
    _check_head_dim(head_dim)
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, numbers.Real) or not rope_theta > 0:
        raise ValueError(f"rope_theta must be a positive number, got {rope_theta!r}")
    return head_dim, float(rope_theta), _scaling_key(rope_scaling)


def _check_head_dim(head_dim) -> None:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even integer, got {head_dim!r}")


_REQUIRED_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _scaling_key(rope_scaling) -> tuple:
    """Validated, hashable form of `rope_scaling`: (type, *parameters)."""
    if rope_scaling is None:
        return ("default",)
    if not isinstance(rope_scaling, dict):
        raise TypeError(f"rope_scaling must be a dict or None, got {type(rope_scaling).__name__}")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))  # "type": older configs
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
    values = []
    for name in _REQUIRED_KEYS[rope_type]:
        value = rope_scaling.get(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(
                f"rope_scaling[{name!r}] must be a positive number for rope_type {rope_type!r}, got {value!r}"
            )
        values.append(float(value))
    if rope_type == "llama3" and not values[2] > values[1]:
        raise ValueError(
            f"rope_scaling['high_freq_factor'] must exceed 'low_freq_factor', got {values[2]} <= {values[1]}"
        )
    return (rope_type, *values)


def _compute_inv_freq(head_dim, rope_theta, rope_scaling) -> torch.Tensor:
    _, theta, (rope_type, *params) = _config_key(head_dim, rope_theta, rope_scaling)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if rope_type == "linear":
        inv_freq = inv_freq / params[0]
    elif rope_type == "llama3":
        factor, low_freq_factor, high_freq_factor, original_context = params
        low_freq_wavelen = original_context / low_freq_factor
        high_freq_wavelen = original_context / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed down by `factor`, short ones kept, the band between
        # interpolated; the expressions follow transformers' order so the bits match.
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


# 2pi to 50 digits: enough for the 64-bit fixed-point turns below.
_TWO_PI = 2 * Fraction(Decimal("3.14159265358979323846264338327950288419716939937511"))


def _turns(inv_freq: torch.Tensor) -> torch.Tensor:
    """int64 `[D/2]`: `inv_freq / 2pi` as a 64-bit fraction of a turn (wrapped into int64), the
    kernel's exact phase increment per position."""
    words = []
    for f in inv_freq.tolist():
        word = round(Fraction(f) * 2**64 / _TWO_PI) % 2**64
        words.append(word - 2**64 if word >= 2**63 else word)
    return torch.tensor(words, dtype=torch.int64)


# --- validation and the registered op ---------------------------------------------------------


def _validate(positions, q, k, head_dim, rope_theta, rope_scaling, out_q, out_k):
    """Check every argument before any kernel runs; returns the positions as the kernels read
    them, q and k with a unit last stride, and the outputs."""
    _config_key(head_dim, rope_theta, rope_scaling)
    for name, t in (("positions", positions), ("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dtype not in DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    if q.dim() != 3 or q.shape[-1] != head_dim:
        raise ValueError(f"q must have shape [T, Hq, head_dim={head_dim}], got {list(q.shape)}")
    t = q.shape[0]
    if k.dtype != q.dtype:
        raise TypeError(f"k must have q's dtype {q.dtype}, got {k.dtype}")
    if k.dim() != 3 or k.shape[0] != t or k.shape[-1] != head_dim:
        raise ValueError(f"k must have shape [T={t}, Hkv, head_dim={head_dim}], got {list(k.shape)}")
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    if positions.dtype not in POSITION_DTYPES:
        raise TypeError(f"positions must be int32 or int64, got {positions.dtype}")
    if positions.dim() != 1 or positions.shape[0] != t:
        raise ValueError(f"positions must have shape [T] = [{t}], got {list(positions.shape)}")
    if positions.device != q.device:
        raise ValueError(f"positions is on {positions.device} but q is on {q.device}")
    outs = []
    for name, out, src, src_name in (("out_q", out_q, q, "q"), ("out_k", out_k, k, "k")):
        if out is None:
            out = torch.empty(src.shape, dtype=src.dtype, device=src.device)
        else:
            check_buffer(
                name, out, shape=src.shape, dtype=src.dtype, device=src.device, of=src_name,
                shape_text=f"{src_name}'s shape {list(src.shape)}",
                not_aliasing=(("q", q), ("k", k), *(("out_q", o) for o in outs)),
            )
        outs.append(out)
    return dense_input(positions), unit_stride_rows(q), unit_stride_rows(k), outs[0], outs[1]


@torch.library.custom_op("fastcot::rotary_embedding", mutates_args=("out_q", "out_k"))
def _rotary_embedding_op(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    turns: torch.Tensor,
    out_q: torch.Tensor,
    out_k: torch.Tensor,
    backend: str,
) -> None:
    """Registered op: `out_q`, `out_k` = q, k rotated by `positions` with the named backend
    (the reference reads `inv_freq`, the kernel the same frequencies as `turns`)."""
    if backend == "triton":
        rotary_embedding_triton(positions, q, k, turns, out_q, out_k)
    elif backend == "torch":
        q_rot, k_rot = reference.rotary_embedding(positions, q, k, inv_freq)
        out_q.copy_(q_rot)
        out_k.copy_(k_rot)
    else:
        raise _backend.BackendError(f"backend {backend!r} has no rotary_embedding kernel")


@_rotary_embedding_op.register_fake
def _(positions, q, k, inv_freq, turns, out_q, out_k, backend):
    return None


def launch_config(head_dim: int, max_heads: int) -> tuple[int, int]:
    """(BLOCK_HALF, BLOCK_HEADS): about 512 elements of each half-head per program."""
    block_half = 1 << max(0, head_dim // 2 - 1).bit_length()
    block_heads = min(max(1, 512 // block_half), 1 << max(0, max_heads - 1).bit_length())
    return block_half, block_heads


def rotary_embedding_triton(positions, q, k, turns, out_q, out_k, *, arch: int | None = None) -> None:
    """Launch the Triton kernel (layouts already checked: unit last strides, contiguous outputs).
    `arch`: the SM version to build for (default the device's), which decides PDL (`_backend.triton_pdl`)."""
    from fastcot.kernels.triton.rotary import _rotary_kernel

    t, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    block_half, block_heads = launch_config(head_dim, max(num_q_heads, num_kv_heads))
    head_blocks = -(-num_q_heads // block_heads) + -(-num_kv_heads // block_heads)
    if t == 0 or head_blocks == 0:
        return
    use_pdl = _backend.triton_pdl(q.device, arch)
    _rotary_kernel[(t, head_blocks)](
        positions_ptr=positions, turns_ptr=turns, q_ptr=q, k_ptr=k, q_out_ptr=out_q, k_out_ptr=out_k,
        num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
        stride_qt=q.stride(0), stride_qh=q.stride(1), stride_kt=k.stride(0), stride_kh=k.stride(1),
        stride_q_out_t=out_q.stride(0), stride_q_out_h=out_q.stride(1),
        stride_k_out_t=out_k.stride(0), stride_k_out_h=out_k.stride(1),
        HALF=head_dim // 2, BLOCK_HALF=block_half, BLOCK_HEADS=block_heads, USE_PDL=use_pdl,
        num_warps=NUM_WARPS, launch_pdl=use_pdl,
    )


# Head counts (Hq, Hkv) of Llama 3.2 1B (head_dim 64) and Llama 3.1 8B/70B (head_dim 128).
_SHIPPED_SHAPES = ((64, 32, 8), (128, 32, 8), (128, 64, 8))


def aot_specs():
    """Compile specs for the AOT check: every shipped (head_dim, head block) configuration in
    fp16 and bf16 with int64 positions, plus int32 positions for one of them; each also with
    PDL, as sm_90 launches them (`pdl` variants, sm_90 only)."""
    from fastcot.kernels.aot import ARCHS, KernelSpec
    from fastcot.kernels.triton.rotary import _rotary_kernel

    def spec(head_dim, heads, dtype, positions="i64", pdl=False):
        block_half, block_heads = launch_config(head_dim, heads)
        return KernelSpec(
            name=f"rotary d{head_dim} heads{block_heads} w{NUM_WARPS} {dtype} pos-{positions}{' pdl' if pdl else ''}",
            fn=_rotary_kernel, num_warps=NUM_WARPS, num_stages=1, archs=(90,) if pdl else ARCHS,
            signature={
                "positions_ptr": f"*{positions}", "turns_ptr": "*i64",
                "q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "q_out_ptr": f"*{dtype}", "k_out_ptr": f"*{dtype}",
                "num_q_heads": "i32", "num_kv_heads": "i32",
                "stride_qt": "i32", "stride_qh": "i32", "stride_kt": "i32", "stride_kh": "i32",
                "stride_q_out_t": "i32", "stride_q_out_h": "i32", "stride_k_out_t": "i32", "stride_k_out_h": "i32",
            },
            constexprs={"HALF": head_dim // 2, "BLOCK_HALF": block_half, "BLOCK_HEADS": block_heads, "USE_PDL": pdl},
            aligned=("positions_ptr", "turns_ptr", "q_ptr", "k_ptr", "q_out_ptr", "k_out_ptr", "stride_qt",
                     "stride_qh", "stride_kt", "stride_kh", "stride_q_out_t", "stride_q_out_h", "stride_k_out_t",
                     "stride_k_out_h"),
        )

    configs = {}
    for head_dim, hq, hkv in _SHIPPED_SHAPES:
        configs.setdefault((head_dim, launch_config(head_dim, max(hq, hkv))), (head_dim, max(hq, hkv)))
    specs = [spec(head_dim, heads, dtype, pdl=pdl) for head_dim, heads in configs.values()
             for dtype in ("fp16", "bf16") for pdl in (False, True)]
    specs += [spec(128, 32, "bf16", positions="i32", pdl=pdl) for pdl in (False, True)]
    return specs
