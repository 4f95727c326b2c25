"""GPTQ and AWQ checkpoint tensors, packed and decoded straight from the formats' definitions.

Deliberately element-by-element and independent of `fastcot.quant.importers`: these are the
specification the importers are tested against (see fastcot/quant/importers.py for the
format description and sources).
"""

import torch

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _nibble(word: int, j: int) -> int:
    return (int(word) >> (4 * j)) & 0xF


def pack_gptq(q, zeros, g_idx, checkpoint_format):
    """q int `[N, K]`, zeros int `[G, N]` (true zero points) -> (qweight `[K/8, N]`, qzeros `[G, N/8]`).

    Classic "gptq" stores `zero - 1` (masked to 4 bits, as the original packer's overflow does).
    """
    n, k = q.shape
    qweight = torch.zeros(k // 8, n, dtype=torch.int64)
    for r in range(k // 8):
        for j in range(8):
            qweight[r] |= q[:, 8 * r + j].long() << (4 * j)
    stored = zeros.long() - (1 if checkpoint_format == "gptq" else 0)
    stored = stored & 0xF
    g = zeros.shape[0]
    qzeros = torch.zeros(g, n // 8, dtype=torch.int64)
    for c in range(n // 8):
        for j in range(8):
            qzeros[:, c] |= stored[:, 8 * c + j] << (4 * j)
    return _to_int32(qweight), _to_int32(qzeros)


def dequant_gptq(qweight, qzeros, scales, g_idx, group_size, checkpoint_format):
    """W `[N, K]` float64: `scale[g, n] * (q - zero)`, with `zero = stored + 1` for classic gptq."""
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if g_idx is None:
        g_idx = torch.arange(k) // (k if group_size == -1 else group_size)
    w = torch.empty(n, k, dtype=torch.float64)
    for kk in range(k):
        g = int(g_idx[kk])
        for nn in range(n):
            q = _nibble(qweight[kk // 8, nn], kk % 8)
            z = _nibble(qzeros[g, nn // 8], nn % 8) + (1 if checkpoint_format == "gptq" else 0)
            w[nn, kk] = float(scales[g, nn]) * (q - z)
    return w


def pack_awq(q, zeros):
    """q int `[N, K]`, zeros int `[G, N]` -> (qweight `[K, N/8]`, qzeros `[G, N/8]`), interleaved."""
    n, k = q.shape

    def pack_cols(m):  # m [R, N] -> [R, N/8]; nibble i of word c is column 8c + AWQ_ORDER[i]
        out = torch.zeros(m.shape[0], n // 8, dtype=torch.int64)
        for c in range(n // 8):
            for i in range(8):
                out[:, c] |= m[:, 8 * c + AWQ_ORDER[i]].long() << (4 * i)
        return _to_int32(out)

    return pack_cols(q.t()), pack_cols(zeros)


def dequant_awq(qweight, qzeros, scales, group_size):
    k, n = qweight.shape[0], qweight.shape[1] * 8
    gs = k if group_size == -1 else group_size
    w = torch.empty(n, k, dtype=torch.float64)
    for c in range(n // 8):
        for i in range(8):
            nn = 8 * c + AWQ_ORDER[i]
            for kk in range(k):
                q = _nibble(qweight[kk, c], i)
                z = _nibble(qzeros[kk // gs, c], i)
                w[nn, kk] = float(scales[kk // gs, nn]) * (q - z)
    return w
