"""GGUF block formats written by hand and decoded straight from their definitions (llama.cpp
`ggml-common.h` block structs and `ggml-quants.c` `dequantize_row_*`), in float64 then rounded
once to float32, independent of fastcot and of the `gguf` package's decoders.

Every product in these formats is exact in float32 (a float16 scale times integers of at most
8 bits, then times at most 6 bits), and each weight rounds at most once, so the float64 value
rounded to float32 is the format's float32 value bit for bit.
"""

from __future__ import annotations

import numpy as np

QK = 32  # weights per block, Q4_0 / Q4_1 / Q8_0
QK_K = 256  # weights per super-block, K-quants
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def _half_bytes(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def _half(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16).astype(np.float64).reshape(b.shape[:-1])


def random_blocks(type_name: str, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 `[rows, k // block * bytes]`: random quantized values, float16 scales in a sane range."""
    per_block = QK_K if type_name.endswith("_K") else QK
    nblocks = rows * (k // per_block)
    b = rng.integers(0, 256, size=(nblocks, BLOCK_BYTES[type_name]), dtype=np.uint8)
    d = _half_bytes(rng.uniform(0.002, 0.02, nblocks) * rng.choice([-1, 1], nblocks))
    if type_name == "Q6_K":
        b[:, 208:210] = d  # ql, qh, scales, then d last
    else:
        b[:, 0:2] = d
    if type_name in ("Q4_1", "Q4_K", "Q5_K"):  # a minimum (Q4_1) or the scale of the minimums
        b[:, 2:4] = _half_bytes(rng.uniform(-0.05, 0.05, nblocks) if type_name == "Q4_1"
                                else rng.uniform(0.001, 0.01, nblocks))
    return b.reshape(rows, -1)


def decode(type_name: str, data: np.ndarray, k: int) -> np.ndarray:
    """float32 `[rows, k]` from uint8 `[rows, bytes]` by the format's definition."""
    rows = data.shape[0]
    per_block = QK_K if type_name.endswith("_K") else QK
    blocks = data.reshape(rows * (k // per_block), BLOCK_BYTES[type_name])
    out = np.stack([_DECODERS[type_name](b) for b in blocks])
    return out.reshape(rows, k).astype(np.float32)


def _q4_0(b):
    d, qs = _half(b[0:2]), b[2:18].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4])  # y[j] = low nibble of qs[j], y[j + 16] = high nibble
    return d * (q - 8)


def _q4_1(b):
    d, m, qs = _half(b[0:2]), _half(b[2:4]), b[4:20].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4])
    return d * q + m


def _q8_0(b):
    return _half(b[0:2]) * b[2:34].view(np.int8).astype(np.int64)


def _scale_min_k4(j, s):
    """ggml's get_scale_min_k4: the 6-bit scale and minimum of sub-block j from 12 packed bytes."""
    s = s.astype(np.int64)
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def _q4_k(b):
    d, dmin, scales, qs = _half(b[0:2]), _half(b[2:4]), b[4:16], b[16:144].astype(np.int64)
    y = np.empty(QK_K)
    for step, j in enumerate(range(0, QK_K, 64)):
        q = qs[32 * step: 32 * step + 32]
        sc1, m1 = _scale_min_k4(2 * step, scales)
        sc2, m2 = _scale_min_k4(2 * step + 1, scales)
        y[j: j + 32] = d * sc1 * (q & 0xF) - dmin * m1
        y[j + 32: j + 64] = d * sc2 * (q >> 4) - dmin * m2
    return y


def _q5_k(b):
    d, dmin, scales = _half(b[0:2]), _half(b[2:4]), b[4:16]
    qh, qs = b[16:48].astype(np.int64), b[48:176].astype(np.int64)
    y = np.empty(QK_K)
    for step, j in enumerate(range(0, QK_K, 64)):
        q = qs[32 * step: 32 * step + 32]
        u1, u2 = 1 << (2 * step), 2 << (2 * step)
        sc1, m1 = _scale_min_k4(2 * step, scales)
        sc2, m2 = _scale_min_k4(2 * step + 1, scales)
        y[j: j + 32] = d * sc1 * ((q & 0xF) + np.where(qh & u1, 16, 0)) - dmin * m1
        y[j + 32: j + 64] = d * sc2 * ((q >> 4) + np.where(qh & u2, 16, 0)) - dmin * m2
    return y


def _q6_k(b):
    ql, qh = b[0:128].astype(np.int64), b[128:192].astype(np.int64)
    sc, d = b[192:208].view(np.int8).astype(np.int64), _half(b[208:210])
    y = np.empty(QK_K)
    for half in range(2):  # 128 weights each: ql += 64, qh += 32, sc += 8
        l_lo, h, s, base = ql[64 * half: 64 * half + 64], qh[32 * half: 32 * half + 32], sc[8 * half:], 128 * half
        for i in range(32):
            group = i // 16
            q1 = ((l_lo[i] & 0xF) | (((h[i] >> 0) & 3) << 4)) - 32
            q2 = ((l_lo[i + 32] & 0xF) | (((h[i] >> 2) & 3) << 4)) - 32
            q3 = ((l_lo[i] >> 4) | (((h[i] >> 4) & 3) << 4)) - 32
            q4 = ((l_lo[i + 32] >> 4) | (((h[i] >> 6) & 3) << 4)) - 32
            y[base + i] = d * s[group] * q1
            y[base + i + 32] = d * s[group + 2] * q2
            y[base + i + 64] = d * s[group + 4] * q3
            y[base + i + 96] = d * s[group + 6] * q4
    return y


_DECODERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
