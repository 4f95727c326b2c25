"""Randomized differential cases, one function per public op of `fastcot.ops`.

Each case draws a configuration from its seed (shapes, dtypes, group sizes, act-order, GQA
ratios, block sizes, empty sequences, and a memory layout for every tensor argument), runs the
op on one backend, and compares with `fastcot/kernels/reference.py` computed in float64. It
also checks that outputs given as `out=` (poisoned with NaN) are fully written, that caches
pre-filled with sentinels change only in the documented slots, that read-only inputs are left
alone, and that a non-contiguous tensor the op writes is refused with an error naming it.
"""

from __future__ import annotations

import torch
from random_draw import (
    FLOATS,
    FP8,
    Draw,
    Untouched,
    check_close,
    check_identical,
    non_contiguous,
    raises_naming,
)

import fastcot
from fastcot.kernels import reference

F64 = torch.float64


def run(op: str, seed: int, backend: str) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    CASES[op](Draw(seed, device), backend)


def _outside_backend(d: Draw, backend: str, limits: dict[str, tuple], call) -> bool:
    """The cuda backend serves part of an op's contract (docs name its limits). When the drawn
    case lies outside them, the op must refuse it before any launch, naming the argument:
    `limits` maps an argument name to (is_outside, exception type). True when refused."""
    if backend != "cuda":
        return False
    for name, (outside, exc_type) in limits.items():
        if outside:
            with raises_naming(d, exc_type, name):
                call()
            return True
    return False


def _refuses_non_contiguous(d: Draw, name: str, like: torch.Tensor, call) -> None:
    """Sometimes: the op given a non-contiguous version of a tensor it must not copy (one it
    writes, or a KV cache) refuses it with a ValueError naming it."""
    bad = non_contiguous(like) if like is not None and d.coin(f"bad_{name}", 0.25) else None
    if bad is not None:
        with raises_naming(d, ValueError, name):
            call(bad)


# --- int4 --------------------------------------------------------------------------------------


def _int4_weight(d: Draw) -> fastcot.Int4Weight:
    """A random int4 weight: raw nibbles, scales and (GPTQ v1 style, up to 16) zero points."""
    gs = d.choice("group_size", (32, 64, 128, -1))
    k = gs * d.randint("groups", 1, 3) if gs != -1 else 8 * d.randint("k_words", 1, 24)
    n = d.randint("n", 1, 40)
    scale_dtype = d.choice("scale_dtype", FLOATS)
    groups = 1 if gs == -1 else k // gs
    q = d.randint_tensor(0, 16, (n, k))
    scales = (0.02 + 0.2 * d.rand((groups, n))).to(scale_dtype)
    zeros = None if d.coin("symmetric") else d.randint_tensor(0, 17, (groups, n)).to(scale_dtype)
    perm = d.randperm(k).to(torch.int32) if d.coin("act_order") else None
    # The weight's own tensors are checked when it is built: a non-contiguous one is refused.
    _refuses_non_contiguous(d, "scales", scales, lambda bad: fastcot.Int4Weight(
        qweight=reference.pack_int4_rows(q), scales=bad, zeros=zeros, perm=perm, group_size=gs, shape=(n, k)))
    return fastcot.Int4Weight(qweight=reference.pack_int4_rows(q), scales=scales, zeros=zeros, perm=perm,
                              group_size=gs, shape=(n, k))


def case_int4_matmul(d: Draw, backend: str) -> None:
    weight = _int4_weight(d)
    n, k = weight.shape
    dtype = d.choice("x_dtype", FLOATS)
    lead = d.choice("lead", [(1,), (1,), (2,), (3,), (5,), (17,), (2, 3), (0,), ()])
    x = d.layout("x", d.randn((*lead, k), dtype))
    bias = None
    if d.coin("bias"):
        bias = d.layout("bias", d.randn((n,), d.choice("bias_dtype", FLOATS)),
                        kinds=("contiguous", "offset", "strided", "broadcast"))
    out = d.poisoned_out("out", (*lead, n), dtype)
    untouched = Untouched(d, x=x, bias=bias)
    rows = x[..., 0].numel() if x.dim() > 1 else 1
    with fastcot.backend(backend):
        if _outside_backend(d, backend, {"x": (rows > 16, ValueError)},
                            lambda: fastcot.ops.int4_matmul(x, weight, bias, out=out)):
            return
        y = fastcot.ops.int4_matmul(x, weight, bias, out=out)
    assert out is None or y is out, "int4_matmul did not return its out="
    untouched.check()
    expected = reference.int4_matmul(x.to(F64), weight.qweight, weight.scales, weight.zeros, weight.perm,
                                     weight.group_size, bias, compute_dtype=F64)
    w = weight.dequantize(F64)
    magnitude = (x.to(F64).abs() @ w.abs().t()).abs().max().item() if x.numel() and n else 1.0
    if bias is not None:
        magnitude += bias.abs().max().item()
    check_close(d, "int4_matmul", y, expected, dtype, magnitude)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", y, lambda bad: fastcot.ops.int4_matmul(x, weight, bias, out=bad))


def _dequantize_rounding(values: torch.Tensor, dtype: torch.dtype, backend: str) -> torch.Tensor:
    """float32 dequantized values in `dtype` as the backend's contract rounds them: to nearest
    even, except bfloat16 from the Triton interpreter, which truncates (see docs/int4.md)."""
    if dtype == torch.bfloat16 and backend == "triton" and values.device.type == "cpu":
        return (values.view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return values.to(dtype)


def case_int4_dequantize(d: Draw, backend: str) -> None:
    weight = _int4_weight(d)
    dtype = d.choice("dtype", (None, *FLOATS))
    target = weight.scales.dtype if dtype is None else dtype
    out = d.poisoned_out("out", weight.shape, target)
    with fastcot.backend(backend):
        got = fastcot.ops.int4_dequantize(weight, dtype, out=out)
    assert out is None or got is out, "int4_dequantize did not return its out="
    values = reference.int4_dequantize(weight.qweight, weight.scales, weight.zeros, weight.perm,
                                       weight.group_size, torch.float32)
    check_identical(d, "int4_dequantize", got, _dequantize_rounding(values, target, backend))
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", got, lambda bad: fastcot.ops.int4_dequantize(weight, target, out=bad))


# --- paged KV cache --------------------------------------------------------------------------


def _fp8_grid() -> torch.Tensor:
    """Every finite non-negative float8 e4m3fn value, ascending."""
    values = torch.arange(128, dtype=torch.uint8).view(FP8).float()
    return values[torch.isfinite(values)].unique()


def _kv_values(d: Draw, name: str, shape, dtype, scale: float | None) -> torch.Tensor:
    """Random keys or values; for a float8 cache, mixed with values whose quotient by the scale
    sits at or one float32 step off a float8 rounding midpoint, tiny negatives that round to
    -0, and values past the saturation point 448 * scale."""
    x = d.randn(shape, F64, scale=d.choice(f"{name}_spread", (0.5, 3.0, 40.0)))
    if scale is not None:
        grid = _fp8_grid().double()
        mid = ((grid[1:] + grid[:-1]) / 2).to(x.device)
        pick = d.randint_tensor(0, mid.numel(), shape).to(x.device)
        sign = torch.where(d.rand(shape) < 0.5, -1.0, 1.0).double()
        near = (mid[pick] * sign * scale).float()
        near = torch.where(d.rand(shape) < 0.3, near.nextafter(near * 2), near).double()
        tiny = -d.rand(shape).double() * (2.0**-11) * scale
        kind = d.randint_tensor(0, 10, shape)
        x = torch.where(kind < 4, near, torch.where(kind < 5, tiny, torch.where(kind < 6, x * 500 * scale, x)))
    return x.to(dtype)


def _sentinel_cache(d: Draw, shape, dtype) -> torch.Tensor:
    if dtype == FP8:
        return d.randint_tensor(0, 256, shape).to(torch.uint8).view(FP8)
    return d.randn(shape, dtype, scale=100.0)


def case_write_kv_cache(d: Draw, backend: str) -> None:
    block_size = d.choice("block_size", (8, 16, 32))
    num_blocks = d.randint("num_blocks", 1, 5)
    hkv, hd = d.choice("hkv", (1, 2, 4)), d.choice("head_dim", (16, 64, 128))
    dtype = d.choice("dtype", FLOATS)
    fp8 = d.coin("fp8_cache")
    scales = {}
    if fp8:
        scales = dict(k_scale=d.choice("k_scale", (0.3, 0.05, 1.7)), v_scale=d.choice("v_scale", (0.3, 0.2, 2.5)))
    capacity = num_blocks * block_size
    tokens = d.randint("tokens", 0, min(capacity, 24))
    slots = d.randperm(capacity)[:tokens]
    slots = torch.where(d.rand((tokens,)) < 0.2, -1, slots).to(d.choice("slot_dtype", (torch.int32, torch.int64)))
    slots = d.layout("slot_mapping", slots, fill=-1)
    key = d.layout("key", _kv_values(d, "key", (tokens, hkv, hd), dtype, scales.get("k_scale")))
    value = d.layout("value", _kv_values(d, "value", (tokens, hkv, hd), dtype, scales.get("v_scale")))
    cache_dtype = FP8 if fp8 else dtype
    k_cache = _sentinel_cache(d, (num_blocks, block_size, hkv, hd), cache_dtype)
    v_cache = _sentinel_cache(d, (num_blocks, block_size, hkv, hd), cache_dtype)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    reference.write_kv_cache(key, value, k_want, v_want, slots, **scales)
    untouched = Untouched(d, key=key, value=value, slot_mapping=slots)
    with fastcot.backend(backend):
        fastcot.ops.write_kv_cache(key, value, k_cache, v_cache, slots, **scales)
    untouched.check()
    check_identical(d, "k_cache after write_kv_cache", k_cache, k_want)
    check_identical(d, "v_cache after write_kv_cache", v_cache, v_want)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "k_cache", k_cache, lambda bad: fastcot.ops.write_kv_cache(
            key, value, bad, torch.empty_like(bad), slots, **scales))


def _paged_setup(d: Draw, seq_lens: list[int]):
    """Caches, block tables over shuffled physical blocks (unused entries hold ids of no block)
    and the scales, for sequences of the given lengths."""
    block_size = d.choice("block_size", (8, 16, 32, 256))
    hkv, group, hd = d.choice("hkv", (1, 2)), d.choice("gqa", (1, 4, 8)), d.choice("head_dim", (64, 128))
    dtype = d.choice("dtype", FLOATS)
    fp8 = d.coin("fp8_cache", 0.35)
    k_scale, v_scale = (d.choice("k_scale", (0.5, 0.05)), d.choice("v_scale", (0.25, 2.0))) if fp8 else (1.0, 1.0)
    needed = [-(-n // block_size) for n in seq_lens]
    # A wide table makes the decode launcher split the context (capacity >= 512 tokens).
    capacity = d.choice("table_capacity", (0, 0, 512, 1024, 2048))
    width = max(max(needed, default=0) + d.randint("spare_columns", 0, 2), -(-capacity // block_size), 1)
    num_blocks = sum(needed) + d.randint("spare_blocks", 0, 3) + 1
    garbage = d.choice("unused_entries", (2**30, -1, num_blocks, 7 * num_blocks + 5))
    table = torch.full((len(seq_lens), width), garbage, dtype=torch.int32)
    order = d.randperm(num_blocks).cpu().to(torch.int32)
    used = 0
    for b, count in enumerate(needed):
        table[b, :count] = order[used : used + count]
        used += count
    shape = (num_blocks, block_size, hkv, hd)
    if fp8:
        k_cache = (d.randn(shape) / k_scale).to(FP8)
        v_cache = (d.randn(shape) / v_scale).to(FP8)
    else:
        k_cache, v_cache = d.randn(shape, dtype), d.randn(shape, dtype)
    block_tables = d.layout("block_tables", table.to(d.device), fill=2**30)
    scale = d.choice("scale", (None, 0.3, 0.05))
    return dict(k_cache=k_cache, v_cache=v_cache, block_tables=block_tables), dict(
        scale=scale, k_scale=k_scale, v_scale=v_scale), hkv * group, hd, dtype


def case_paged_decode_attention(d: Draw, backend: str) -> None:
    batch = d.randint("batch", 1, 4)
    lens = [0 if d.rng.random() < 0.2 else d.rng.randint(1, 70) for _ in range(batch)]
    d.drawn["seq_lens"] = lens
    tensors, scalars, hq, hd, dtype = _paged_setup(d, lens)
    q = d.layout("q", d.randn((batch, hq, hd), dtype))
    # Gaps of a strided seq_lens hold the table's capacity: read as lengths, they reach the
    # unused block-table entries (a crash, not a hang).
    capacity = tensors["block_tables"].shape[1] * tensors["k_cache"].shape[1]
    seq_lens = d.layout("seq_lens", torch.tensor(lens, dtype=torch.int32, device=d.device), fill=capacity)
    out = d.poisoned_out("out", q.shape, dtype)
    untouched = Untouched(d, q=q, seq_lens=seq_lens, **tensors)
    args = (q, tensors["k_cache"], tensors["v_cache"], tensors["block_tables"], seq_lens)
    with fastcot.backend(backend):
        if _outside_backend(d, backend, {"k_cache": (args[1].dtype == torch.float32, TypeError)},
                            lambda: fastcot.ops.paged_decode_attention(*args, **scalars, out=out)):
            return
        y = fastcot.ops.paged_decode_attention(*args, **scalars, out=out)
    assert out is None or y is out, "paged_decode_attention did not return its out="
    untouched.check()
    expected = reference.paged_decode_attention(q.to(F64), *args[1:], **scalars, compute_dtype=F64)
    check_close(d, "paged_decode_attention", y, expected, dtype)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", y, lambda bad: fastcot.ops.paged_decode_attention(
            *args, **scalars, out=bad))
        _refuses_non_contiguous(d, "k_cache", args[1], lambda bad: fastcot.ops.paged_decode_attention(
            q, bad, torch.empty_like(bad), *args[3:], **scalars))


def case_cascade_decode_attention(d: Draw, backend: str) -> None:
    """Random groups of rows with random shared lengths (at most each member's length) and
    shared tables over random blocks: the reference defines what each row reads."""
    batch = d.randint("batch", 1, 6)
    lens = [0 if d.rng.random() < 0.15 else d.rng.randint(1, 70) for _ in range(batch)]
    d.drawn["seq_lens"] = lens
    tensors, scalars, hq, hd, dtype = _paged_setup(d, lens)
    num_blocks, block_size = tensors["k_cache"].shape[:2]
    rows = list(range(batch))
    d.rng.shuffle(rows)
    groups, pad_groups = [], d.randint("pad_groups", 0, 2)
    while rows and d.coin("another_group", 0.7):
        size = d.rng.randint(1, 4)
        members, rows = rows[:size], rows[size:]
        shared = d.rng.randint(0, min(lens[r] for r in members))
        groups.append((shared, members))
    d.drawn["groups"] = groups
    max_rows = d.randint("max_rows_extra", 0, 2) + max((len(m) for _, m in groups), default=1)
    width = max((-(-s // block_size) for s, _ in groups), default=0) + d.randint("shared_spare", 0, 2) + 1
    group_rows = torch.full((len(groups) + pad_groups, max_rows), -1, dtype=torch.int32)
    shared_lens = torch.zeros(len(groups) + pad_groups, dtype=torch.int32)
    shared_tables = torch.randint(0, num_blocks, (len(groups) + pad_groups, width), dtype=torch.int32)
    row_groups = torch.full((batch,), -1, dtype=torch.int32)
    for g, (shared, members) in enumerate(groups):
        group_rows[g, : len(members)] = torch.tensor(members, dtype=torch.int32)
        shared_lens[g] = shared
        row_groups[members] = g
    q = d.layout("q", d.randn((batch, hq, hd), dtype))
    seq_lens = d.layout("seq_lens", torch.tensor(lens, dtype=torch.int32, device=d.device))
    group_args = dict(group_rows=d.layout("group_rows", group_rows.to(d.device), fill=2**30),
                      shared_lens=d.layout("shared_lens", shared_lens.to(d.device), fill=2**30),
                      shared_block_tables=d.layout("shared_block_tables", shared_tables.to(d.device), fill=2**30),
                      row_groups=d.layout("row_groups", row_groups.to(d.device), fill=2**30))
    out = d.poisoned_out("out", q.shape, dtype)
    untouched = Untouched(d, q=q, seq_lens=seq_lens, **tensors, **group_args)
    args = (q, tensors["k_cache"], tensors["v_cache"], tensors["block_tables"], seq_lens)
    with fastcot.backend(backend):
        y = fastcot.ops.cascade_decode_attention(*args, **group_args, **scalars, out=out)
    assert out is None or y is out, "cascade_decode_attention did not return its out="
    untouched.check()
    expected = reference.cascade_decode_attention(q.to(F64), *args[1:], **group_args, **scalars, compute_dtype=F64)
    check_close(d, "cascade_decode_attention", y, expected, dtype)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", y, lambda bad: fastcot.ops.cascade_decode_attention(
            *args, **group_args, **scalars, out=bad))


def case_paged_prefill_attention(d: Draw, backend: str) -> None:
    batch = d.randint("batch", 1, 3)
    q_lens = [0 if d.rng.random() < 0.2 else d.rng.randint(1, 12) for _ in range(batch)]
    lens = [n + d.rng.randint(0, 40) for n in q_lens]
    d.drawn.update(q_lens=q_lens, seq_lens=lens)
    tensors, scalars, hq, hd, dtype = _paged_setup(d, lens)
    tokens = sum(q_lens)
    q = d.layout("q", d.randn((tokens, hq, hd), dtype))
    cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32).to(d.device)
    cu_seqlens_q = d.layout("cu_seqlens_q", cu, fill=0)
    capacity = tensors["block_tables"].shape[1] * tensors["k_cache"].shape[1]
    seq_lens = d.layout("seq_lens", torch.tensor(lens, dtype=torch.int32, device=d.device), fill=capacity)
    max_query_len = d.choice("max_query_len", (None, max(q_lens), max(q_lens) + 70))
    causal = d.coin("causal", 0.7)
    out = d.poisoned_out("out", q.shape, dtype)
    untouched = Untouched(d, q=q, cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, **tensors)
    args = (q, tensors["k_cache"], tensors["v_cache"], tensors["block_tables"], cu_seqlens_q, seq_lens)
    with fastcot.backend(backend):
        y = fastcot.ops.paged_prefill_attention(*args, **scalars, causal=causal, out=out, max_query_len=max_query_len)
    assert out is None or y is out, "paged_prefill_attention did not return its out="
    untouched.check()
    expected = reference.paged_prefill_attention(q.to(F64), *args[1:], **scalars, causal=causal, compute_dtype=F64)
    check_close(d, "paged_prefill_attention", y, expected, dtype)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", y, lambda bad: fastcot.ops.paged_prefill_attention(
            *args, **scalars, causal=causal, out=bad))


# --- fused small ops ---------------------------------------------------------------------------


def case_rms_norm(d: Draw, backend: str) -> None:
    lead = d.choice("lead", [(1,), (3,), (7,), (2, 2), (0,)])
    h = d.choice("hidden", (1, 8, 96, 200, 333, 1030))
    dtype = d.choice("dtype", FLOATS)
    x = d.layout("x", d.randn((*lead, h), dtype))
    weight = d.layout("weight", (1 + 0.5 * d.randn((h,))).to(d.choice("weight_dtype", (dtype, torch.float32))),
                      kinds=("contiguous", "offset", "strided", "broadcast"))
    eps = d.choice("eps", (1e-6, 1e-5, 0.1))
    residual = d.randn((*lead, h), dtype, scale=4.0) if d.coin("residual") else None
    residual_before = None if residual is None else residual.clone()
    out = d.poisoned_out("out", x.shape, dtype)
    untouched = Untouched(d, x=x, weight=weight)
    with fastcot.backend(backend):
        y = fastcot.ops.rms_norm(x, weight, eps, residual=residual, out=out)
    assert out is None or y is out, "rms_norm did not return its out="
    untouched.check()
    expected, h_expected = reference.rms_norm(x, weight, eps, residual_before, compute_dtype=F64)
    check_close(d, "rms_norm", y, expected, dtype)
    if residual is not None:
        check_close(d, "rms_norm's updated residual", residual, h_expected, dtype)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", y, lambda bad: fastcot.ops.rms_norm(x, weight, eps, out=bad))
        if residual is not None:
            _refuses_non_contiguous(d, "residual", residual,
                                    lambda bad: fastcot.ops.rms_norm(x, weight, eps, residual=bad))


SCALINGS = (None, {"rope_type": "linear", "factor": 4.0},
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192})


def case_rotary_embedding(d: Draw, backend: str) -> None:
    tokens = d.choice("tokens", (0, 1, 2, 5, 9))
    hq, hkv, hd = d.choice("hq", (1, 4, 8)), d.choice("hkv", (1, 2)), d.choice("head_dim", (64, 128, 34))
    dtype = d.choice("dtype", FLOATS)
    theta, scaling = d.choice("rope_theta", (10000.0, 500000.0)), d.choice("rope_scaling", SCALINGS)
    top = d.choice("max_position", (2**12, 2**17, 2**31 - 1))
    positions = d.randint_tensor(0, top, (tokens,), d.choice("positions_dtype", (torch.int32, torch.int64)))
    positions = d.layout("positions", positions)
    if d.coin("fused_qkv"):  # q and k as views of one qkv projection
        qkv = d.randn((tokens, hq + 2 * hkv, hd), dtype)
        q, k = qkv[:, :hq], qkv[:, hq : hq + hkv]
    else:
        q = d.layout("q", d.randn((tokens, hq, hd), dtype))
        k = d.layout("k", d.randn((tokens, hkv, hd), dtype))
    out_q, out_k = d.poisoned_out("out_q", q.shape, dtype), d.poisoned_out("out_k", k.shape, dtype)
    untouched = Untouched(d, positions=positions, q=q, k=k)
    kwargs = dict(head_dim=hd, rope_theta=theta, rope_scaling=scaling)
    with fastcot.backend(backend):
        q_rot, k_rot = fastcot.ops.rotary_embedding(positions, q, k, **kwargs, out_q=out_q, out_k=out_k)
    assert (out_q is None or q_rot is out_q) and (out_k is None or k_rot is out_k), "outputs not returned"
    untouched.check()
    inv_freq = fastcot.ops.rope_inv_freq(hd, theta, scaling, device=d.device)
    q_want, k_want = reference.rotary_embedding(positions, q.to(F64), k.to(F64), inv_freq, compute_dtype=F64)
    check_close(d, "rotary_embedding q", q_rot, q_want, dtype)
    check_close(d, "rotary_embedding k", k_rot, k_want, dtype)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out_q", q_rot, lambda bad: fastcot.ops.rotary_embedding(
            positions, q, k, **kwargs, out_q=bad))


def case_silu_and_mul(d: Draw, backend: str) -> None:
    lead = d.choice("lead", [(1,), (3,), (2, 3), (0,)])
    i = d.choice("intermediate", (1, 7, 64, 300, 1100))
    dtype = d.choice("dtype", FLOATS)
    x = d.layout("x", d.randn((*lead, 2 * i), dtype, scale=d.choice("spread", (1.0, 30.0))))
    out = d.poisoned_out("out", (*lead, i), dtype)
    untouched = Untouched(d, x=x)
    with fastcot.backend(backend):
        y = fastcot.ops.silu_and_mul(x, out=out)
    assert out is None or y is out, "silu_and_mul did not return its out="
    untouched.check()
    check_close(d, "silu_and_mul", y, reference.silu_and_mul(x, compute_dtype=F64), dtype)
    with fastcot.backend(backend):
        _refuses_non_contiguous(d, "out", y, lambda bad: fastcot.ops.silu_and_mul(x, out=bad))


CASES = {
    "int4_matmul": case_int4_matmul,
    "int4_dequantize": case_int4_dequantize,
    "write_kv_cache": case_write_kv_cache,
    "paged_decode_attention": case_paged_decode_attention,
    "paged_prefill_attention": case_paged_prefill_attention,
    "cascade_decode_attention": case_cascade_decode_attention,
    "rms_norm": case_rms_norm,
    "rotary_embedding": case_rotary_embedding,
    "silu_and_mul": case_silu_and_mul,
}
