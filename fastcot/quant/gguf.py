"""GGUF (llama.cpp) tensor types into fastcot: Q4_0 and Q4_1 straight into `Int4Weight`, the
rest dequantized exactly to float32.

A GGUF matrix of `ne = [K, N]` is stored row by row (N rows of K), each row as blocks along K.
The 4-bit block formats (llama.cpp `ggml-common.h`), 32 weights a block:

- Q4_0, 18 bytes: float16 `d`, then 16 bytes `qs`; weight j is `qs[j] & 0xF` for j < 16 and
  `qs[j - 16] >> 4` for j >= 16, and `w = d * (q - 8)`.
- Q4_1, 20 bytes: float16 `d`, float16 `m`, then `qs` as Q4_0; `w = d * q + m`.

Both map onto `Int4Weight` at group size 32 with no requantization: Q4_0 is the symmetric
form (zero point 8, `scale = d`), Q4_1 keeps `m` as the weight's float minimums (`mins`).
With float16 `d`, `d * q` is exact in float32, so `dequantize()` equals the format's float32
definition bit for bit. Q8_0 and the K-quants (Q4_K, Q5_K, Q6_K; 256 weights a super-block
with 6- or 8-bit sub-block scales) are dequantized in float32 by the `gguf` package (llama.cpp's
own reference code), where every product is exact and each weight rounds at most once.
"""

from __future__ import annotations

import numpy as np
import torch

from fastcot.kernels import reference
from fastcot.quant.int4 import Int4Weight

INT4_TYPES = ("Q4_0", "Q4_1")
FLOAT_TYPES = ("F32", "F16", "BF16")
DEQUANTIZED_TYPES = ("Q8_0", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TYPES = FLOAT_TYPES + INT4_TYPES + DEQUANTIZED_TYPES
GGUF_GROUP_SIZE = 32
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}


def check_type(type_name: str, tensor_name: str) -> None:
    if type_name not in SUPPORTED_TYPES:
        raise ValueError(
            f"GGUF tensor {tensor_name!r} has type {type_name}; fastcot reads {', '.join(SUPPORTED_TYPES)}"
        )


def int4_from_gguf(data, type_name: str, shape: tuple[int, int]) -> Int4Weight:
    """An `Int4Weight` of `shape = (N, K)` from Q4_0/Q4_1 rows, exactly.

    Args:
        data: uint8 `[N, K // 32 * block_bytes]` (numpy array or tensor), the tensor's bytes.
        type_name: "Q4_0" or "Q4_1".
        shape: `(N, K)` in torch's `[out_features, in_features]` order (GGUF's `ne` reversed).
    """
    if type_name not in INT4_TYPES:
        raise ValueError(f"type_name must be one of {INT4_TYPES}, got {type_name!r}")
    n, k = shape
    if k % GGUF_GROUP_SIZE:
        raise ValueError(f"{type_name} rows hold blocks of {GGUF_GROUP_SIZE}, so K must be a multiple of it, got K={k}")
    block_bytes = _BLOCK_BYTES[type_name]
    # A copy: GGUFReader's arrays are read-only views of a memory-mapped file.
    raw = torch.from_numpy(np.array(data, dtype=np.uint8)) if not isinstance(data, torch.Tensor) else data.contiguous()
    if raw.dtype != torch.uint8 or raw.numel() != n * (k // GGUF_GROUP_SIZE) * block_bytes:
        raise ValueError(
            f"{type_name} data for shape {[n, k]} must be {n * (k // GGUF_GROUP_SIZE) * block_bytes} uint8 bytes, "
            f"got {raw.numel()} {raw.dtype}"
        )
    blocks = raw.reshape(n, k // GGUF_GROUP_SIZE, block_bytes)
    d = _half(blocks[..., 0:2])  # [N, G]
    mins = _half(blocks[..., 2:4]).t().contiguous() if type_name == "Q4_1" else None
    qs = blocks[..., block_bytes - 16:]
    q = torch.cat([qs & 0xF, qs >> 4], dim=-1).reshape(n, k)  # low nibbles first, then high
    return Int4Weight(
        qweight=reference.pack_int4_rows(q), scales=d.t().contiguous(), zeros=None, perm=None,
        group_size=GGUF_GROUP_SIZE, shape=(n, k), mins=mins,
    )


def dequantize_gguf(data, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 tensor of `shape` (torch order) that GGUF `data` of `type_name` stands for."""
    from gguf import GGMLQuantizationType, quants

    if type_name not in SUPPORTED_TYPES:
        raise ValueError(f"type_name must be one of {SUPPORTED_TYPES}, got {type_name!r}")
    values = quants.dequantize(np.asarray(data), GGMLQuantizationType[type_name])
    values = torch.from_numpy(np.array(values, dtype=np.float32))
    if values.numel() != int(np.prod(shape)):
        raise ValueError(f"{type_name} data holds {values.numel()} values, expected shape {list(shape)}")
    return values.reshape(shape)


def _half(byte_pairs: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., 2]` little-endian float16 bit patterns -> float16 `[...]`."""
    return byte_pairs.contiguous().view(torch.float16).squeeze(-1)
