"""How a model's linears are stored: float, quantized on load ("int4"), or a GPTQ/AWQ checkpoint.

`quant_scheme(quantization_config, quantization)` reads config.json's `quantization_config`
and the user's `quantization` argument into one `QuantScheme` (or None for float).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastcot.quant import Int4Weight
from fastcot.quant.importers import GPTQ_FORMATS

QUANTIZATIONS = (None, "int4", "gptq", "awq")
INT4_GROUP_SIZES = (128, 64, 32)  # preferred first


def int4_group_size(k: int) -> int:
    """The group size used when quantizing on load: 128, else the largest of 64, 32 dividing K, else -1."""
    return next((gs for gs in INT4_GROUP_SIZES if k % gs == 0), -1)


@dataclass(frozen=True)
class QuantScheme:
    """`method` "int4" (quantize float weights on load), "gptq" or "awq" (import stored int4)."""

    method: str
    group_size: int = 128
    sym: bool = False
    checkpoint_format: str = "gptq"

    def tensor_shapes(self, k: int, n: int) -> dict[str, tuple[tuple[int, ...], str, bool]]:
        """The stored tensors of one `[N, K]` linear: suffix -> (shape, "float"/"int", required)."""
        groups = 1 if self.group_size == -1 else k // self.group_size
        if self.method == "gptq":
            return {
                "qweight": ((k // 8, n), "int", True),
                "qzeros": ((groups, n // 8), "int", True),
                "scales": ((groups, n), "float", True),
                "g_idx": ((k,), "int", False),
            }
        if self.method == "awq":
            return {
                "qweight": ((k, n // 8), "int", True),
                "qzeros": ((groups, n // 8), "int", True),
                "scales": ((groups, n), "float", True),
            }
        raise ValueError(f"quantization method {self.method!r} stores no int4 tensors")

    def import_weight(self, tensors: dict[str, torch.Tensor]) -> Int4Weight:
        """An `Int4Weight` from one linear's stored tensors (keyed by suffix)."""
        if self.method == "gptq":
            return Int4Weight.from_gptq(
                tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors.get("g_idx"),
                group_size=self.group_size, sym=self.sym, checkpoint_format=self.checkpoint_format,
            )
        return Int4Weight.from_awq(tensors["qweight"], tensors["qzeros"], tensors["scales"], group_size=self.group_size)


def quant_scheme(quantization_config: dict | None, quantization) -> QuantScheme | None:
    """The scheme for a checkpoint's `quantization_config` and the requested `quantization`.

    `quantization` None follows the checkpoint; "int4" quantizes a float checkpoint on load and
    accepts an int4 (GPTQ/AWQ) one as it is; "gptq"/"awq" require that checkpoint method.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization_config is None:
        if quantization in ("gptq", "awq"):
            raise ValueError(f"quantization={quantization!r} but config.json has no quantization_config")
        return QuantScheme("int4") if quantization == "int4" else None
    qc = quantization_config
    if not isinstance(qc, dict):
        raise ValueError(f"config: quantization_config must be a dict, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if method not in ("gptq", "awq"):
        raise ValueError(f"config: quantization_config.quant_method {method!r} not supported; fastcot loads 'gptq' and 'awq'")
    if quantization in ("gptq", "awq") and quantization != method:
        raise ValueError(f"quantization={quantization!r} but the checkpoint is quantized with {method!r}")
    bits = qc.get("bits", qc.get("w_bit"))
    if bits != 4:
        raise ValueError(f"config: quantization_config.bits must be 4, got {bits!r}")
    group_size = qc.get("group_size", qc.get("q_group_size"))
    if group_size not in (32, 64, 128, -1):
        raise ValueError(f"config: quantization_config.group_size must be 32, 64, 128 or -1, got {group_size!r}")
    if method == "gptq":
        fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
        if fmt not in GPTQ_FORMATS:
            raise ValueError(f"config: quantization_config.checkpoint_format must be one of {GPTQ_FORMATS}, got {fmt!r}")
        if qc.get("lm_head", False):
            raise ValueError("config: quantization_config.lm_head=true (a quantized lm_head) is not supported")
        return QuantScheme("gptq", group_size=group_size, sym=bool(qc.get("sym", True)), checkpoint_format=fmt)
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise ValueError(f"config: quantization_config.version must be 'gemm' for AWQ, got {qc.get('version')!r}")
    if not qc.get("zero_point", True):
        raise ValueError("config: quantization_config.zero_point=false (symmetric AWQ) is not supported")
    return QuantScheme("awq", group_size=group_size)
