"""fastcot's int4 weight format and its round-to-nearest quantizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastcot.kernels import reference

SUPPORTED_GROUP_SIZES = (32, 64, 128, -1)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True, eq=False)
class Int4Weight:
    """A `[N, K]` weight quantized to 4 bits in groups of `group_size` along K.

    Packed layout (fastcot's own, read by every int4 kernel):

    - ``qweight``: int32 ``[N, K // 8]``, row-major. Nibble ``j`` (bits ``4j..4j+3``, least
      significant first) of ``qweight[n, w]`` is ``q[n, 8w + j]``, an unsigned value 0..15.
      Rows are output channels, so a decode kernel streams each row's K contiguously and one
      128-byte line carries 256 weights of one row.
    - ``scales``: ``[G, N]`` float16/bfloat16/float32, ``G = K // group_size`` (``G = 1`` for
      ``group_size == -1``). Group-major so the scales of a row block are one contiguous load.
    - ``zeros``: ``[G, N]``, same dtype as ``scales``, or ``None`` for the symmetric zero point 8.
      Kept as floats in the q domain so integer (GPTQ, AWQ) and shifted (GPTQ v1 "+1") zero
      points are exact.
    - ``mins``: ``[G, N]``, same dtype as ``scales``, or ``None``. An offset per group in the
      weight domain, for formats that store a float minimum per block (GGUF Q4_1:
      ``w = d * q + m``); a weight has ``zeros`` or ``mins``, never both.
    - ``perm``: int32 ``[K]`` or ``None``. With act-order checkpoints the columns are stored
      sorted by group, and stored column ``j`` holds input channel ``perm[j]``.

    Dequantization, in float32 and rounded once (``g = j // group_size``)::

        W[n, perm[j]] = (q[n, j] - zero[g, n]) * scale[g, n]      # mins is None
        W[n, perm[j]] = q[n, j] * scale[g, n] + min[g, n]         # with mins

    With 16-bit scales the product ``q * scale`` is exact in float32, so the second form
    rounds once, like the first.

    Build one with :func:`quantize_int4`, :meth:`from_gptq`, :meth:`from_awq`, or from GGUF
    Q4_0/Q4_1 blocks with :func:`fastcot.quant.gguf.int4_from_gguf`.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    perm: torch.Tensor | None
    group_size: int
    shape: tuple[int, int]
    mins: torch.Tensor | None = None

    def __post_init__(self):
        validate_int4_tensors(
            qweight=self.qweight,
            scales=self.scales,
            zeros=self.zeros,
            perm=self.perm,
            group_size=self.group_size,
            shape=self.shape,
            mins=self.mins,
        )

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def nbytes(self) -> int:
        """Bytes a matmul must read for this weight: packed weights, scales, zeros and perm."""
        tensors = (self.qweight, self.scales, self.zeros, self.perm, self.mins)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """The float `[N, K]` weight this represents, in input-channel order: `(q - zero) * scale`
        in float32, rounded once to `dtype` (to nearest even)."""
        return reference.int4_dequantize(
            self.qweight, self.scales, self.zeros, self.perm, self.group_size, dtype, mins=self.mins
        )

    def to(self, device) -> "Int4Weight":
        def move(t):
            return None if t is None else t.to(device)

        return Int4Weight(
            qweight=move(self.qweight),
            scales=move(self.scales),
            zeros=move(self.zeros),
            perm=move(self.perm),
            group_size=self.group_size,
            shape=self.shape,
            mins=move(self.mins),
        )

    @classmethod
    def from_gptq(cls, qweight, qzeros, scales, g_idx=None, *, group_size, sym, checkpoint_format="gptq"):
        """Import AutoGPTQ/GPTQModel tensors (see :func:`fastcot.quant.importers.from_gptq`)."""
        from fastcot.quant.importers import from_gptq

        return from_gptq(
            qweight, qzeros, scales, g_idx,
            group_size=group_size, sym=sym, checkpoint_format=checkpoint_format,
        )

    @classmethod
    def from_awq(cls, qweight, qzeros, scales, *, group_size):
        """Import AutoAWQ GEMM tensors (see :func:`fastcot.quant.importers.from_awq`)."""
        from fastcot.quant.importers import from_awq

        return from_awq(qweight, qzeros, scales, group_size=group_size)

    def __repr__(self) -> str:
        n, k = self.shape
        return (
            f"Int4Weight(shape=({n}, {k}), group_size={self.group_size}, "
            f"scales={self.scales.dtype}, symmetric={self.zeros is None and self.mins is None}, "
            f"{'mins=True, ' if self.mins is not None else ''}"
            f"act_order={self.perm is not None}, device={self.device})"
        )


def check_group_size(group_size, k: int, *, name: str = "group_size") -> int:
    """Validate a group size against K; returns the effective group length along K."""
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"{name} must be an int, got {type(group_size).__name__}")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"{name} must be one of {SUPPORTED_GROUP_SIZES}, got {group_size}")
    if group_size != -1 and k % group_size != 0:
        raise ValueError(f"{name}={group_size} does not divide K={k}")
    return k if group_size == -1 else group_size


def fitting_group_size(k: int, preferred: int = 128) -> int:
    """`preferred` when it divides K, else the largest smaller supported group size that does
    (64, 32), else -1 (one group per row). Raises ValueError when K cannot be int4 at all."""
    if isinstance(preferred, bool) or preferred not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {preferred!r}")
    if k % 8 != 0:
        raise ValueError(f"int4 packing needs K (in_features) to be a multiple of 8, got K={k}")
    if preferred == -1:
        return -1
    return next((gs for gs in (128, 64, 32) if gs <= preferred and k % gs == 0), -1)


def stack_rows(weights: list[Int4Weight]) -> Int4Weight | None:
    """One `Int4Weight` holding `weights` one after the other along N (a fused projection), or
    None when they cannot share one: different K, group size, scale dtype, zero-point form
    (symmetric, zeros, mins) or column order."""
    first = weights[0]
    for w in weights[1:]:
        same = (
            w.shape[1] == first.shape[1] and w.group_size == first.group_size
            and w.scales.dtype == first.scales.dtype
            and (w.zeros is None) == (first.zeros is None) and (w.mins is None) == (first.mins is None)
            and (w.perm is None) == (first.perm is None)
        )
        if not same or (first.perm is not None and not torch.equal(w.perm, first.perm)):
            return None
    if len(weights) == 1:
        return first

    def cat(name):
        parts = [getattr(w, name) for w in weights]
        return None if parts[0] is None else torch.cat(parts, dim=1).contiguous()

    return Int4Weight(
        qweight=torch.cat([w.qweight for w in weights]),
        scales=cat("scales"),
        zeros=cat("zeros"),
        perm=first.perm,
        group_size=first.group_size,
        shape=(sum(w.shape[0] for w in weights), first.shape[1]),
        mins=cat("mins"),
    )


def take_rows(weight: Int4Weight, index: torch.Tensor) -> Int4Weight:
    """The weight's output rows `index` (int `[N']`, e.g. a permutation), in that order, exactly."""
    index = index.to(device=weight.device, dtype=torch.long)

    def cols(t):
        return None if t is None else t[:, index].contiguous()

    return Int4Weight(
        qweight=weight.qweight[index].contiguous(), scales=cols(weight.scales), zeros=cols(weight.zeros),
        perm=weight.perm, group_size=weight.group_size, shape=(index.numel(), weight.shape[1]),
        mins=cols(weight.mins),
    )


def validate_int4_tensors(*, qweight, scales, zeros, perm, group_size, shape, mins=None) -> None:
    """Check that raw tensors form a valid fastcot int4 weight; raises naming the bad field."""
    for name, t in (("qweight", qweight), ("scales", scales)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    n, k = shape
    if k % 8 != 0:
        raise ValueError(f"K must be a multiple of 8 for int4 packing, got K={k}")
    gs = check_group_size(group_size, k)
    num_groups = k // gs
    if qweight.dtype != torch.int32:
        raise TypeError(f"qweight must be int32, got {qweight.dtype}")
    if tuple(qweight.shape) != (n, k // 8):
        raise ValueError(f"qweight must have shape [N, K//8] = {[n, k // 8]}, got {list(qweight.shape)}")
    if not qweight.is_contiguous():
        raise ValueError("qweight must be contiguous")
    if scales.dtype not in SCALE_DTYPES:
        raise TypeError(f"scales must be float16/bfloat16/float32, got {scales.dtype}")
    expected = (num_groups, n)
    if zeros is not None and mins is not None:
        raise ValueError("zeros and mins are exclusive: a weight has q-domain zero points or float minimums")
    for name, t in (("scales", scales), ("zeros", zeros), ("mins", mins)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype != scales.dtype:
            raise TypeError(f"{name} must have the scales' dtype {scales.dtype}, got {t.dtype}")
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape [G, N] = {list(expected)}, got {list(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if t.device != qweight.device:
            raise ValueError(f"{name} is on {t.device} but qweight is on {qweight.device}")
    if perm is not None:
        if perm.dtype != torch.int32:
            raise TypeError(f"perm must be int32, got {perm.dtype}")
        if tuple(perm.shape) != (k,) or not perm.is_contiguous():
            raise ValueError(f"perm must be a contiguous [K] = [{k}] tensor, got {list(perm.shape)}")
        if perm.device != qweight.device:
            raise ValueError(f"perm is on {perm.device} but qweight is on {qweight.device}")


def quantize_int4(weight: torch.Tensor, group_size: int = 128, symmetric: bool = False) -> Int4Weight:
    """Round-to-nearest group-wise int4 quantization of a float `[N, K]` weight.

    Groups of `group_size` run along K (-1: one group per row). Asymmetric quantization maps
    each group's range, widened to include 0, onto 0..15 with an integer zero point;
    symmetric uses zero point 8 and `scale = 2 * max|w| / 15` (as GPTQ does). Scales keep the
    weight's dtype (float16/bfloat16/float32). Every element is within half a scale step of
    its original value, except the symmetric case's largest positive values, which clip to
    7 steps (at most 1 step away).

    Example::

        w = torch.randn(4096, 4096, dtype=torch.float16, device="cuda")
        qw = fastcot.quantize_int4(w, group_size=128)
        y = fastcot.ops.int4_matmul(x, qw)
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {list(weight.shape)}")
    if weight.dtype not in SCALE_DTYPES:
        raise TypeError(f"weight must be float16/bfloat16/float32, got {weight.dtype}")
    n, k = weight.shape
    if k % 8 != 0:
        raise ValueError(f"weight's K (in_features) must be a multiple of 8, got K={k}")
    gs = check_group_size(group_size, k)
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or inf")

    w = weight.float().reshape(n, k // gs, gs)
    if symmetric:
        scale = w.abs().amax(dim=-1) * (2.0 / 15.0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.full_like(scale, 8.0)
    else:
        lo = w.amin(dim=-1).clamp(max=0.0)
        hi = w.amax(dim=-1).clamp(min=0.0)
        scale = (hi - lo) / 15.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # Quantize against the scale as stored, so dequantization reproduces the rounding bound;
    # a scale that underflows the storage dtype becomes 1 (its group is all but zero anyway).
    # Round the stored scale up, never down, so the group's range still fits in 0..15.
    stored = scale.to(weight.dtype)
    stored = torch.where(stored.float() < scale, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    scale = stored.float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zero = torch.round(-lo / scale).clamp(0, 15)
    q = torch.clamp(torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, 15)

    return Int4Weight(
        qweight=reference.pack_int4_rows(q.reshape(n, k)),
        scales=scale.t().contiguous().to(weight.dtype),
        zeros=None if symmetric else zero.t().contiguous().to(weight.dtype),
        perm=None,
        group_size=group_size,
        shape=(n, k),
    )
