"""Pure-torch reference implementations: ground truth for tests, the CPU path and benchmark checks.

Written for clarity, not speed. Each function takes the same raw tensors as the kernels
(no wrapper objects), computes in float32 or wider, and rounds once to the output dtype.
"""

from __future__ import annotations

import torch

_NIBBLE_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_int4_rows(qweight: torch.Tensor) -> torch.Tensor:
    """Unpack fastcot's packed layout: int32 `[N, K // 8]` -> int32 `[N, K]` with values 0..15.

    Nibble j (bits 4j..4j+3, least significant first) of `qweight[n, w]` is `q[n, 8w + j]`.
    """
    shifts = _NIBBLE_SHIFTS.to(qweight.device)
    q = (qweight.unsqueeze(-1) >> shifts) & 0xF
    return q.reshape(qweight.shape[0], -1)


def pack_int4_rows(q: torch.Tensor) -> torch.Tensor:
    """Inverse of `unpack_int4_rows`: integer `[N, K]` (0..15, K % 8 == 0) -> int32 `[N, K // 8]`."""
    n, k = q.shape
    q = q.to(torch.int64).reshape(n, k // 8, 8)
    shifts = _NIBBLE_SHIFTS.to(device=q.device, dtype=torch.int64)
    words = (q << shifts).sum(dim=-1)
    # Nibble 7 can set bit 31: wrap into int32's range instead of overflowing the cast.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def int4_dequantize(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    mins: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize fastcot's int4 layout to a float `[N, K]` matrix in input-channel order.

    `qweight` int32 `[N, K // 8]`; `scales`, `zeros` `[G, N]` (zeros None means the symmetric
    zero point 8); `perm` int32 `[K]` or None (stored column j is input channel `perm[j]`);
    `group_size` -1 means one group per row. `mins` `[G, N]` or None: float minimums per
    group (with zeros None), `w = q * scale + min`. Computed in float32 (float64 if asked
    for), rounded once to `dtype`.
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    q = unpack_int4_rows(qweight).to(compute)
    n, k = q.shape
    gs = k if group_size == -1 else group_size
    group_of_col = torch.arange(k, device=q.device) // gs
    scale = scales.to(compute).t()[:, group_of_col]
    if mins is not None:
        w = q * scale + mins.to(compute).t()[:, group_of_col]
    else:
        zero = 8.0 if zeros is None else zeros.to(compute).t()[:, group_of_col]
        w = (q - zero) * scale
    if perm is not None:
        w_orig = torch.empty_like(w)
        w_orig[:, perm.long()] = w
        w = w_orig
    return w.to(dtype)


def int4_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    mins: torch.Tensor | None = None,
) -> torch.Tensor:
    """`x @ W.T + bias` with `W` from `int4_dequantize`; `x` `[..., K]` -> `[..., N]` in x's dtype.

    Accumulates in `compute_dtype` (float32 by default; float64 for test ground truth).
    """
    w = int4_dequantize(qweight, scales, zeros, perm, group_size, compute_dtype, mins=mins)
    y = x.to(compute_dtype) @ w.t()
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(x.dtype)


# --- paged KV cache and attention ------------------------------------------------------------
# Caches are NHD blocks `[num_blocks, block_size, num_kv_heads, head_dim]`; a float8 cache
# stores `value / scale`.


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Write token t's `key[t]`, `value[t]` (`[T, Hkv, D]`) to slot `slot_mapping[t]`
    (`block * block_size + offset`); slots of -1 are skipped. In place."""
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = _to_cache_dtype(_divide(key[keep].float(), k_scale), k_cache.dtype)
    v_cache[blocks, offsets] = _to_cache_dtype(_divide(value[keep].float(), v_scale), v_cache.dtype)


def _divide(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x / scale, correctly rounded on every device: torch on CUDA multiplies by the reciprocal
    of a Python-number divisor (one float32 step off at times), not of a tensor one."""
    return x / torch.tensor(scale, dtype=x.dtype, device=x.device)


def _to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float8_e4m3fn:
        x = x.clamp(-448.0, 448.0)  # saturate at the format's largest finite value
    return x.to(dtype)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int, scale: float, dtype) -> torch.Tensor:
    """The first `length` cached tokens of one sequence as `[length, Hkv, D]` in `dtype`."""
    block_size = cache.shape[1]
    positions = torch.arange(length, device=cache.device)
    blocks = block_table.long()[positions // block_size]
    return cache[blocks, positions % block_size].to(dtype) * scale


def _attend(q, k, v, scale, mask=None):
    """q `[Lq, Hq, D]`, k/v `[Lk, Hkv, D]` -> `[Lq, Hq, D]`; query heads share KV heads in groups."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a query with no visible key attends to nothing
    return torch.einsum("hqk,khd->qhd", probs, v)


def paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None, k_scale=1.0, v_scale=1.0,
                           compute_dtype=torch.float32):
    """One query token per sequence: q `[B, Hq, D]` attends to positions `[0, seq_lens[b])`.
    Returns `[B, Hq, D]` in q's dtype; a sequence of length 0 gives zeros."""
    b, hq, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(b, hq, d, dtype=compute_dtype, device=q.device)
    for i in range(b):
        n = int(seq_lens[i])
        if n == 0:
            continue
        k = gather_kv(k_cache, block_tables[i], n, k_scale, compute_dtype)
        v = gather_kv(v_cache, block_tables[i], n, v_scale, compute_dtype)
        out[i] = _attend(q[i : i + 1].to(compute_dtype), k, v, scale)[0]
    return out.to(q.dtype)


def cascade_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, group_rows, shared_lens,
                             shared_block_tables, row_groups, scale=None, k_scale=1.0, v_scale=1.0,
                             compute_dtype=torch.float32):
    """Shared-prefix decode: row b in group g = `row_groups[b]` (>= 0) reads its first
    `shared_lens[g]` positions through `shared_block_tables[g]` and positions
    `[shared_lens[g], seq_lens[b])` through `block_tables[b]`; a row with group -1 reads all of
    `[0, seq_lens[b])` through its own table, as `paged_decode_attention`. `group_rows` lists
    each group's rows (the kernels use it; here `row_groups` says the same). Returns
    `[B, Hq, D]` in q's dtype; length 0 gives zeros."""
    b, hq, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(b, hq, d, dtype=compute_dtype, device=q.device)
    block_size = k_cache.shape[1]
    for i in range(b):
        n, g = int(seq_lens[i]), int(row_groups[i])
        shared = min(int(shared_lens[g]), n) if g >= 0 else 0
        if n == 0:
            continue
        positions = torch.arange(n, device=q.device)
        own = block_tables[i].long()[positions // block_size]
        if shared > 0:
            own[:shared] = shared_block_tables[g].long()[positions[:shared] // block_size]
        blocks, offsets = own, positions % block_size
        k = k_cache[blocks, offsets].to(compute_dtype) * k_scale
        v = v_cache[blocks, offsets].to(compute_dtype) * v_scale
        out[i] = _attend(q[i : i + 1].to(compute_dtype), k, v, scale)[0]
    return out.to(q.dtype)


def paged_prefill_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale=None, causal=True,
                            k_scale=1.0, v_scale=1.0, compute_dtype=torch.float32):
    """Packed new tokens q `[T, Hq, D]`: sequence b's `cu_seqlens_q[b+1] - cu_seqlens_q[b]` tokens
    are the last positions of its `seq_lens[b]` cached tokens. Causal: token at position p sees
    positions `<= p`. Returns `[T, Hq, D]` in q's dtype."""
    t, hq, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(t, hq, d, dtype=compute_dtype, device=q.device)
    for i in range(len(seq_lens)):
        start, end = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        n = int(seq_lens[i])
        if end == start:
            continue
        k = gather_kv(k_cache, block_tables[i], n, k_scale, compute_dtype)
        v = gather_kv(v_cache, block_tables[i], n, v_scale, compute_dtype)
        mask = None
        if causal:
            q_pos = torch.arange(n - (end - start), n, device=q.device)
            mask = torch.arange(n, device=q.device)[None, :] <= q_pos[:, None]
        out[start:end] = _attend(q[start:end].to(compute_dtype), k, v, scale, mask)
    return out.to(q.dtype)


# --- fused small ops: RMSNorm, rotary embedding, SiLU-and-multiply ---------------------------
# Roundings that are part of an op's definition (the residual stream stored in the activation
# dtype, HF's cast of the normalized row before the weight multiply) happen in every compute
# dtype, so a float64 run differs from the kernels only by their float32 arithmetic.


def rms_norm(x, weight, eps: float, residual=None, compute_dtype=torch.float32):
    """HF LlamaRMSNorm over the last dim of x `[..., H]`, optionally after a residual add.

    Without `residual`: `weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)`, the mean and the
    scaling in `compute_dtype`, the product rounded to x's dtype. With `residual` (x's shape and
    dtype): `h = x + residual`, added in x's dtype as HF's decoder layer does (torch adds 16-bit
    values in float32 and rounds once), is normalized instead. Returns `(out, h)` (h None
    without residual); nothing is modified in place.
    """
    h = None
    if residual is not None:
        h = x + residual
        x = h
    xc = x.to(compute_dtype)
    variance = xc.pow(2).mean(dim=-1, keepdim=True)
    normed = (xc * torch.rsqrt(variance + eps)).to(x.dtype)
    out = weight.to(compute_dtype) * normed.to(compute_dtype)
    return out.to(x.dtype), h


def rotary_embedding(positions, q, k, inv_freq, compute_dtype=torch.float32):
    """HF Llama rotary embedding ("rotate_half", neox style) over the full head dim.

    q `[T, Hq, D]`, k `[T, Hkv, D]`, positions `[T]` integer, inv_freq `[D/2]` float32. The
    angle `positions[t] * inv_freq[i]` is formed in float64, where it is exact, so its cosine
    and sine keep full accuracy at any position; the rotation runs in `compute_dtype`. Returns
    `(q_rot, k_rot)` in the inputs' dtypes.
    """
    angle = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    cos = angle.cos().to(compute_dtype)[:, None, :]
    sin = angle.sin().to(compute_dtype)[:, None, :]

    def rotate(x):
        x1, x2 = x.to(compute_dtype).chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_and_mul(x, compute_dtype=torch.float32):
    """x `[..., 2I]` -> `silu(x[..., :I]) * x[..., I:]` `[..., I]` (gate first, as vLLM), in
    `compute_dtype`, rounded once to x's dtype."""
    gate, up = x.to(compute_dtype).chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
