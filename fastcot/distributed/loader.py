"""Load one rank's shard of a Hugging Face checkpoint, reading only its slices
(`safe_open(...).get_slice(name)[rows, cols]`), so no rank ever holds the whole model.

Slices per stored tensor (N output rows, K input channels; see `fastcot.distributed.sharding`):

| layer | float `weight [N, K]` | GPTQ `qweight [K/8, N]`, `qzeros [G, N/8]`, `scales [G, N]`, `g_idx [K]` | AWQ `qweight [K, N/8]` |
|---|---|---|---|
| column-parallel (q, k, v, gate, up) | rows of N | columns of N (N per rank a multiple of 8), `g_idx` whole | columns of N/8 |
| row-parallel (o, down) | columns of K | rows of K/8 and whole groups of `qzeros`/`scales`, `g_idx` sliced | rows of K |

Row-parallel int4 layers are cut along K in whole groups: K per rank must be a multiple of
the group size (ValueError otherwise). An act-order GPTQ row-parallel layer (a `g_idx` that
is not `k // group_size`) is split along N instead (`GatheredRowParallelLinear`), because its
groups are scattered along K. Quantize-on-load (`quantization="int4"`) uses the group size
the whole layer would get on one rank, so every rank's weights equal a slice of one rank's.
"""

from __future__ import annotations

import torch

from fastcot.distributed.groups import TPGroup
from fastcot.distributed.layers import (
    GatheredRowParallelLinear,
    ParallelLlamaForCausalLM,
    RowParallelLinear,
)
from fastcot.distributed.sharding import COLUMN_PARTS, ROW_PARTS, ShardPlan, part_kind
from fastcot.layers import Int4Linear
from fastcot.models.checkpoint import (
    checkpoint_dir,
    read_headers,
    require,
    safetensors_files,
)
from fastcot.models.config import load_config
from fastcot.models.loader import _CheckpointLoader, resolve_device, resolve_dtype
from fastcot.models.quant_config import int4_group_size, quant_scheme
from fastcot.quant import quantize_int4

_VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def load_rank_model(name_or_path, plan: ShardPlan, group: TPGroup, *, dtype="auto", device=None,
                    quantization=None) -> ParallelLlamaForCausalLM:
    """Rank `plan.rank`'s `ParallelLlamaForCausalLM` from a checkpoint directory, in eval mode."""
    check_checkpoint_kind(name_or_path)
    device = resolve_device(device)
    path = checkpoint_dir(name_or_path)
    config = load_config(path)
    require("safetensors", f"loading {str(path)!r}")
    dtype = resolve_dtype(dtype, config, device)
    scheme = quant_scheme(config.quantization_config, quantization)
    headers = read_headers(safetensors_files(path))
    with torch.device("meta"):
        model = ParallelLlamaForCausalLM(config, plan, group)
    ShardedCheckpointLoader(model, config, plan, scheme, dtype, device, headers).load()
    return model.eval()


def check_checkpoint_kind(name_or_path) -> None:
    """Tensor parallelism reads safetensors directories: refuse presets and GGUF files."""
    from fastcot.models import gguf, presets

    if presets.is_preset(name_or_path) or gguf.find_gguf(name_or_path) is not None:
        raise ValueError(f"tensor_parallel_size > 1 loads Hugging Face checkpoint directories (safetensors); "
                         f"{str(name_or_path)!r} is a preset or a GGUF file: use tensor_parallel_size=1")


def check_int4_split(config, plan: ShardPlan, quantization) -> None:
    """Refuse quantize-on-load when a row-parallel layer's one-rank group size does not divide
    its K per rank (before any rank starts)."""
    if quantization != "int4" or config.quantization_config is not None or plan.size == 1:
        return
    for name, k in (("o_proj", config.q_size), ("down_proj", config.intermediate_size)):
        gs, k_rank = int4_group_size(k), k // plan.size
        if gs == -1 or k_rank % gs:
            raise ValueError(
                f"cannot quantize {name} to int4 across ranks: its K={k} takes group size {gs} on one rank, "
                f"which does not divide K per rank ({k_rank}); use a smaller tensor_parallel_size"
            )


class ShardedCheckpointLoader(_CheckpointLoader):
    """`_CheckpointLoader` reading one rank's slices; headers are checked against the whole model."""

    def __init__(self, model, config, plan: ShardPlan, scheme, dtype, device, headers):
        super().__init__(model, config, scheme, dtype, device, headers)
        self.plan = plan
        self.method = None if scheme is None or scheme.method == "int4" else scheme.method
        self.gathered: dict[str, bool] = {}  # row-parallel prefix -> split along N (act-order)
        for prefix, (group, index, k, n, bias) in list(self.parts.items()):
            if part_kind(prefix) in COLUMN_PARTS:
                start, stop = plan.out_range(part_kind(prefix))
                self.parts[prefix] = (group, index, k, stop - start, bias)

    @property
    def group(self) -> TPGroup:
        return self.model.group

    # ---- reading slices ------------------------------------------------------------------------

    def _read(self, file, name: str) -> torch.Tensor:
        if name in _VOCAB_TENSORS:
            return self._vocab_rows(file.get_slice(name))
        if name in self.plain:
            return file.get_tensor(name)
        prefix, _, suffix = name.rpartition(".")
        kind = part_kind(prefix)
        tensor = file.get_slice(name)
        if kind in COLUMN_PARTS or self._is_gathered(prefix):
            return self._column_slice(tensor, suffix, prefix, *self.plan.out_range(kind))
        return self._row_slice(tensor, suffix, prefix, *self.plan.in_range(kind))

    def _vocab_rows(self, tensor) -> torch.Tensor:
        start, rows, vocab = self.plan.vocab_start, self.plan.vocab_per_rank, self.plan.vocab_size
        stop = min(start + rows, vocab)
        hidden = tensor.get_shape()[1]
        part = tensor[start:stop] if stop > start else None
        out = torch.zeros(rows, hidden, dtype=part.dtype if part is not None else torch.float32)
        if part is not None:
            out[: stop - start] = part
        return out

    def _column_slice(self, tensor, suffix: str, prefix: str, n0: int, n1: int) -> torch.Tensor:
        if suffix in ("weight", "bias"):
            return tensor[n0:n1]
        if suffix == "g_idx":
            return tensor[:]
        if n0 % 8 or n1 % 8:
            raise ValueError(f"{prefix}: int4 output rows are packed by 8, so each rank's slice "
                             f"[{n0}, {n1}) must start and end at a multiple of 8")
        if suffix == "scales" or (suffix == "qweight" and self.method == "gptq"):
            return tensor[:, n0:n1]
        return tensor[:, n0 // 8: n1 // 8]  # qzeros, AWQ qweight: packed along N

    def _row_slice(self, tensor, suffix: str, prefix: str, k0: int, k1: int) -> torch.Tensor:
        if suffix == "weight":
            return tensor[:, k0:k1]
        if suffix == "bias":
            return tensor[:]
        gs = self.scheme.group_size
        if gs != -1 and (k0 % gs or k1 % gs):
            raise ValueError(
                f"{prefix}: a row-parallel int4 layer is split along K in whole groups, but K per rank "
                f"({k1 - k0}) is not a multiple of group_size={gs}: use a smaller tensor_parallel_size"
            )
        if suffix == "qweight":
            return tensor[k0 // 8: k1 // 8] if self.method == "gptq" else tensor[k0:k1]
        if suffix == "g_idx":
            return tensor[k0:k1] - (0 if gs == -1 else k0 // gs)
        return tensor[:] if gs == -1 else tensor[k0 // gs: k1 // gs]  # qzeros, scales

    def _is_gathered(self, prefix: str) -> bool:
        """Whether a row-parallel GPTQ layer is act-order (read its whole, small `g_idx`)."""
        if prefix not in self.gathered:
            name = f"{prefix}.g_idx"
            act_order = False
            if self.method == "gptq" and name in self.headers:
                from safetensors import safe_open

                with safe_open(str(self.headers[name][0]), framework="pt", device="cpu") as f:
                    g_idx = f.get_tensor(name).long()
                gs = self.scheme.group_size
                in_order = torch.zeros_like(g_idx) if gs == -1 else torch.arange(g_idx.numel()) // gs
                act_order = not torch.equal(g_idx, in_order)
            self.gathered[prefix] = act_order
        return self.gathered[prefix]

    # ---- building ------------------------------------------------------------------------------

    def _build_linear(self, group: str, parts):
        prefix = self.group_prefixes[group][0]
        if part_kind(prefix) not in ROW_PARTS:
            return super()._build_linear(group, parts)
        if self.gathered.get(prefix):
            return GatheredRowParallelLinear(super()._build_linear(group, parts), self.group)
        piece = dict(parts[0])
        bias = piece.pop("bias", None)
        if self.scheme is not None and self.scheme.method == "int4":
            k = self.parts[prefix][2]
            gs = int4_group_size(k)
            k_rank = piece["weight"].shape[1]
            if gs == -1 or k_rank % gs:
                raise ValueError(
                    f"cannot quantize {group!r} to int4 across ranks: its K={k} takes group size {gs} on one rank, "
                    f"which does not divide K per rank ({k_rank}); use a smaller tensor_parallel_size"
                )
            linear = Int4Linear(quantize_int4(piece["weight"], group_size=gs), None)
        else:
            linear = super()._build_linear(group, {0: piece})
        # A rank-0-only bias would also do; added after the sum it is exactly the one-rank result.
        return RowParallelLinear(linear, bias, self.group)
