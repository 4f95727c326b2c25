"""Importers from published int4 checkpoint formats into fastcot's `Int4Weight`.

Each format is unpacked to one logical form (`q[N, K]` 0..15, `scales[G, N]`, `zeros[G, N]`,
optional column permutation) and repacked once into fastcot's layout.

Formats (y = x @ W.T, W is `[N, K]`, G = K // group_size):

- GPTQ (AutoGPTQ, GPTQModel): `qweight` int32 `[K/8, N]` packed along K (nibble j of row r is
  input channel 8r + j, least significant first); `qzeros` int32 `[G, N/8]` packed along N the
  same way; `scales` `[G, N]`; optional `g_idx` `[K]` (group of each input channel; act-order
  when it is not `k // group_size`). The classic "gptq" format stores `zero - 1` ("v1"),
  "gptq_v2" stores the zero as is.
- AWQ GEMM (AutoAWQ): `qweight` int32 `[K, N/8]` and `qzeros` int32 `[G, N/8]` packed along N with
  the interleave `[0, 2, 4, 6, 1, 3, 5, 7]` (nibble i of word c is output channel
  8c + order[i]); `scales` `[G, N]`; zeros stored as is.
"""

from __future__ import annotations

import torch

from fastcot.kernels import reference
from fastcot.quant.int4 import SCALE_DTYPES, Int4Weight, check_group_size

GPTQ_FORMATS = ("gptq", "gptq_v2")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _unpack_words(words: torch.Tensor, order=None) -> torch.Tensor:
    """int32 `[R, C]` -> int32 `[R, 8C]`: nibble i of word c goes to column `8c + order[i]`."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device)
    nibbles = (words.unsqueeze(-1) >> shifts) & 0xF
    if order is not None:
        inverse = [order.index(col) for col in range(8)]
        nibbles = nibbles[..., inverse]
    return nibbles.reshape(words.shape[0], -1)


def _check_int32_2d(name: str, t, rows: int | None = None, cols: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {list(t.shape)}")
    exp = [rows if rows is not None else t.shape[0], cols if cols is not None else t.shape[1]]
    if list(t.shape) != exp:
        raise ValueError(f"{name} must have shape {exp}, got {list(t.shape)}")


def _check_scales(scales, num_groups: int, n: int, device) -> None:
    if not isinstance(scales, torch.Tensor):
        raise TypeError(f"scales must be a torch.Tensor, got {type(scales).__name__}")
    if scales.dtype not in SCALE_DTYPES:
        raise TypeError(f"scales must be float16/bfloat16/float32, got {scales.dtype}")
    if list(scales.shape) != [num_groups, n]:
        raise ValueError(f"scales must have shape [G, N] = {[num_groups, n]}, got {list(scales.shape)}")
    if scales.device != device:
        raise ValueError(f"scales is on {scales.device} but qweight is on {device}")


def from_gptq(qweight, qzeros, scales, g_idx=None, *, group_size: int, sym: bool, checkpoint_format: str = "gptq") -> Int4Weight:
    """Import a 4-bit GPTQ linear layer. See the module docstring for the layout.

    Args:
        qweight: int32 `[K/8, N]`.
        qzeros: int32 `[G, N/8]`.
        scales: `[G, N]` float16/bfloat16/float32.
        g_idx: optional int `[K]`; act-order checkpoints (non-monotone `g_idx`) are stored
            permuted so that every group is contiguous along K.
        group_size: 32, 64, 128 or -1 (one group).
        sym: the checkpoint's `sym`; symmetric weights must have zero point 8 and are
            stored without zeros.
        checkpoint_format: "gptq" (zeros stored minus one) or "gptq_v2".
    """
    if checkpoint_format not in GPTQ_FORMATS:
        raise ValueError(f"checkpoint_format must be one of {GPTQ_FORMATS}, got {checkpoint_format!r}")
    _check_int32_2d("qweight", qweight)
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    gs = check_group_size(group_size, k)
    num_groups = k // gs
    if n % 8 != 0:
        raise ValueError(f"GPTQ packs zeros along N, so N must be a multiple of 8, got N={n}")
    _check_int32_2d("qzeros", qzeros, num_groups, n // 8)
    _check_scales(scales, num_groups, n, qweight.device)
    if qzeros.device != qweight.device:
        raise ValueError(f"qzeros is on {qzeros.device} but qweight is on {qweight.device}")

    # Transposed, GPTQ's K-packed words are already fastcot's row layout: [N, K/8].
    q = _unpack_words(qweight.t().contiguous())
    zeros = _unpack_words(qzeros).to(torch.float32)
    if checkpoint_format == "gptq":
        zeros = zeros + 1
    perm = _gptq_perm(g_idx, k, gs, num_groups, qweight.device)
    if perm is not None:
        q = q[:, perm.long()]

    if sym:
        if not bool((zeros == 8).all()):
            raise ValueError(
                "sym=True but qzeros hold zero points other than 8 "
                f"(checkpoint_format={checkpoint_format!r}; is it the other GPTQ format?)"
            )
        zeros_out = None
    else:
        zeros_out = zeros.to(scales.dtype).contiguous()

    return Int4Weight(
        qweight=reference.pack_int4_rows(q),
        scales=scales.contiguous(),
        zeros=zeros_out,
        perm=perm,
        group_size=group_size,
        shape=(n, k),
    )


def _gptq_perm(g_idx, k: int, gs: int, num_groups: int, device) -> torch.Tensor | None:
    """The column order that makes act-order groups contiguous, or None if already in order."""
    if g_idx is None:
        return None
    if not isinstance(g_idx, torch.Tensor):
        raise TypeError(f"g_idx must be a torch.Tensor, got {type(g_idx).__name__}")
    if g_idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"g_idx must be int32 or int64, got {g_idx.dtype}")
    if list(g_idx.shape) != [k]:
        raise ValueError(f"g_idx must have shape [K] = [{k}], got {list(g_idx.shape)}")
    if g_idx.device != device:
        raise ValueError(f"g_idx is on {g_idx.device} but qweight is on {device}")
    g_idx = g_idx.long()
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= num_groups:
        raise ValueError(f"g_idx values must lie in [0, {num_groups}), got [{int(g_idx.min())}, {int(g_idx.max())}]")
    in_order = torch.arange(k, device=device) // gs
    if torch.equal(g_idx, in_order):
        return None
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], in_order):
        raise ValueError(f"g_idx must assign exactly group_size={gs} input channels to every group")
    return perm.to(torch.int32).contiguous()


def from_awq(qweight, qzeros, scales, *, group_size: int) -> Int4Weight:
    """Import a 4-bit AutoAWQ GEMM linear layer. See the module docstring for the layout.

    Args:
        qweight: int32 `[K, N/8]`, interleaved along N.
        qzeros: int32 `[G, N/8]`, interleaved along N.
        scales: `[G, N]` float16/bfloat16/float32.
        group_size: 32, 64, 128 or -1.
    """
    _check_int32_2d("qweight", qweight)
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if k % 8 != 0:
        raise ValueError(f"K (qweight rows) must be a multiple of 8, got K={k}")
    gs = check_group_size(group_size, k)
    num_groups = k // gs
    _check_int32_2d("qzeros", qzeros, num_groups, n // 8)
    _check_scales(scales, num_groups, n, qweight.device)
    if qzeros.device != qweight.device:
        raise ValueError(f"qzeros is on {qzeros.device} but qweight is on {qweight.device}")

    q = _unpack_words(qweight, AWQ_ORDER).t().contiguous()  # [K, N] -> [N, K]
    zeros = _unpack_words(qzeros, AWQ_ORDER)
    return Int4Weight(
        qweight=reference.pack_int4_rows(q),
        scales=scales.contiguous(),
        zeros=zeros.to(scales.dtype).contiguous(),
        perm=None,
        group_size=group_size,
        shape=(n, k),
    )


def to_gptq(weight: Int4Weight) -> dict[str, torch.Tensor]:
    """The "gptq_v2" tensors of an `Int4Weight` (the inverse of `from_gptq` with that format):
    `qweight [K/8, N]`, `qzeros [G, N/8]` (zero points as stored, 8 for symmetric weights),
    `scales [G, N]` and `g_idx [K]` (int32, the group of each input channel).

    GPTQ is a published, stable layout, so weights saved this way load anywhere GPTQ loads,
    whatever fastcot's own packing becomes. Raises ValueError for what GPTQ cannot hold:
    float minimums (GGUF Q4_1), zero points that are not integers in 0..15, N not a multiple
    of 8 (GPTQ packs zero points along N).
    """
    if not isinstance(weight, Int4Weight):
        raise TypeError(f"weight must be a fastcot.Int4Weight, got {type(weight).__name__}")
    n, k = weight.shape
    if weight.mins is not None:
        raise ValueError("GPTQ has no float minimums: this weight (GGUF Q4_1 style) cannot be saved as GPTQ")
    if n % 8 != 0:
        raise ValueError(f"GPTQ packs zero points along N, so N must be a multiple of 8, got N={n}")
    gs = k if weight.group_size == -1 else weight.group_size
    num_groups = k // gs
    if weight.zeros is None:
        zeros = torch.full((num_groups, n), 8, dtype=torch.int32, device=weight.device)
    else:
        z = weight.zeros.float()
        if not bool(((z == z.round()) & (z >= 0) & (z <= 15)).all()):
            raise ValueError("GPTQ zero points are integers 0..15; this weight has others (e.g. GPTQ v1's 16)")
        zeros = z.to(torch.int32)
    q = reference.unpack_int4_rows(weight.qweight)  # stored column order
    stored_group = torch.arange(k, device=weight.device, dtype=torch.int32) // gs
    if weight.perm is None:
        g_idx = stored_group
    else:
        perm = weight.perm.long()
        q_in_order = torch.empty_like(q)
        q_in_order[:, perm] = q
        q = q_in_order
        g_idx = torch.empty_like(stored_group)
        g_idx[perm] = stored_group
    return {
        "qweight": reference.pack_int4_rows(q).t().contiguous(),
        "qzeros": reference.pack_int4_rows(zeros),
        "scales": weight.scales.contiguous(),
        "g_idx": g_idx.contiguous(),
    }
