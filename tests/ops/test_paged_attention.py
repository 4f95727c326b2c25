"""Paged KV cache ops against the float64 references: cache writes, split-KV decode, prefill."""

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops.paged_attention import (
    TRITON_DECODE_BLOCKS_PER_SM,
    _decode_tiles,
    _fp8_pairs,
    decode_num_splits,
    paged_decode_triton,
    sm_version,
)

FP8 = torch.float8_e4m3fn
ON_GPU = torch.cuda.is_available()
TRITON_HERE = ON_GPU or _backend.triton_interpreter_enabled()
BACKENDS = ["torch"] + (["triton"] if TRITON_HERE else [])
# The interpreter has no bf16 arithmetic; bf16 runs in the GPU tests.
DTYPES = [torch.float16, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]


def make_cache(num_blocks, block_size, num_kv_heads, head_dim, dtype, device, *, fp8_scale=None):
    """Random K/V caches; with fp8_scale, float8 caches holding `value / scale`."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = torch.randn(shape, device=device)
    v = torch.randn(shape, device=device)
    if fp8_scale is not None:
        return (k / fp8_scale).to(FP8), (v / fp8_scale).to(FP8)
    return k.to(dtype), v.to(dtype)


def make_tables(seq_lens, block_size, num_blocks, device, *, spare_blocks=2):
    """Block tables over a random permutation of the physical blocks, with unused tail columns."""
    needed = [-(-n // block_size) for n in seq_lens]
    width = max(needed + [1]) + spare_blocks
    assert sum(needed) <= num_blocks
    order = torch.randperm(num_blocks)
    table = torch.full((len(seq_lens), width), -7, dtype=torch.int32)  # garbage past the end
    used = 0
    for b, count in enumerate(needed):
        table[b, :count] = order[used : used + count]
        used += count
    return table.to(device), torch.tensor(seq_lens, dtype=torch.int32, device=device)


def tolerance(dtype, expected):
    tol = TOLERANCE[torch.float16 if dtype == FP8 else dtype]
    return dict(atol=tol["atol"] * max(1.0, expected.abs().max().item()), rtol=tol["rtol"])


# --- write_kv_cache ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache_dtype", ["same", "fp8"])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_write_kv_cache_matches_reference_exactly(backend, cache_dtype, slot_dtype, device):
    dtype = DTYPES[-1]
    num_blocks, block_size, hkv, d, tokens = 9, 8, 2, 64, 30
    key = torch.randn(tokens, hkv, d, device=device).to(dtype) * 40  # some values saturate fp8
    value = torch.randn(tokens, hkv, d, device=device).to(dtype)
    slots = torch.randperm(num_blocks * block_size)[:tokens].to(slot_dtype).to(device)
    slots[[2, 17]] = -1
    fp8 = cache_dtype == "fp8"
    scales = dict(k_scale=0.5, v_scale=0.25) if fp8 else {}
    cdt = FP8 if fp8 else dtype
    caches = []
    for impl in ("reference", backend):
        k_cache = torch.full((num_blocks, block_size, hkv, d), 3.0, device=device).to(cdt)
        v_cache = k_cache.clone()
        if impl == "reference":
            reference.write_kv_cache(key, value, k_cache, v_cache, slots, **scales)
        else:
            with fastcot.backend(backend):
                fastcot.ops.write_kv_cache(key, value, k_cache, v_cache, slots, **scales)
        caches.append((k_cache, v_cache))
    for want, got in zip(caches[0], caches[1]):
        assert torch.equal(want.view(torch.uint8), got.view(torch.uint8))
    # Skipped tokens left their would-be slots alone: untouched slots still hold the fill.
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0].long().cpu()] = False
    assert (caches[1][0].float().view(-1, hkv, d)[untouched.to(device)] == 3.0).all()


def _fp8_targets() -> torch.Tensor:
    """Quotients that probe float8 e4m3fn rounding: every finite value, every midpoint between
    neighbours and the float32 values on either side of it, values that round to -0, and values
    past the saturation point 448."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8).view(FP8).float()
    mids = (codes[1:] + codes[:-1]) / 2
    near = torch.cat([mids, mids.nextafter(torch.full_like(mids, 1e9)), mids.nextafter(torch.zeros_like(mids))])
    special = torch.tensor([-0.0, -1e-6, -2.0**-10, 447.0, 449.0, 464.0, 1e6, float("inf")])
    values = torch.cat([codes, near, special])
    return torch.cat([values, -values])


@pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("scale", [1.0, 0.3, 0.05, 1.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_write_is_torch_division_bit_for_bit(scale, dtype, device):
    """A float8 cache stores `(value / scale).to(float8_e4m3fn)` saturated at +-448, bit for bit:
    a true division (not a product with 1 / scale, which is one float32 step off near
    midpoints), rounded to nearest even, -0 kept as -0."""
    values = (_fp8_targets().double() * scale).to(dtype)
    n = -(-values.numel() // 1024)  # tokens of 8 heads x 128
    key = torch.zeros(n * 1024)
    key[: values.numel()] = values.float()
    key = key.view(n, 8, 128).to(dtype).to(device)
    k_cache = torch.empty(n, 8, 8, 128, dtype=FP8, device=device)
    v_cache = torch.empty_like(k_cache)
    slots = (torch.arange(n, dtype=torch.int32) * 8).to(device)
    with fastcot.backend("triton"):
        fastcot.ops.write_kv_cache(key, key, k_cache, v_cache, slots, k_scale=scale, v_scale=scale)
    got = k_cache[:, 0].reshape(-1).view(torch.uint8).cpu()
    divided = key.reshape(-1).cpu().float() / torch.tensor(scale, dtype=torch.float32)
    want = divided.clamp(-448, 448).to(FP8).view(torch.uint8)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, (
        f"{bad.numel()} of {got.numel()} codes differ; first: value {key.reshape(-1)[bad[0]].item()!r} / {scale} "
        f"stored {got[bad[0]].item():#04x}, torch {want[bad[0]].item():#04x}")
    nan_key = torch.full((1, 8, 128), float("nan"), device=device).to(dtype)
    with fastcot.backend("triton"):
        fastcot.ops.write_kv_cache(nan_key, nan_key, k_cache, v_cache, slots[:1], k_scale=scale, v_scale=scale)
    assert k_cache[0, 0].float().isnan().all(), "NaN must stay NaN, not saturate"


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_kv_cache_rows_not_unit_stride(backend, device):
    """With one KV head, a column-major key `[T, 1, D]` flattens to rows whose elements are not
    adjacent: it is written as the values it shows (it once reached the kernel as is)."""
    dtype = DTYPES[-1]
    key = torch.randn(1, 64, 5, device=device).to(dtype).permute(2, 0, 1)  # [5, 1, 64], strides (1, 320, 5)
    value = torch.randn(5, 64, device=device).to(dtype)[:, None, :]
    slots = torch.tensor([3, 9, -1, 0, 12], dtype=torch.int32, device=device)
    caches = []
    for impl in ("reference", backend):
        k_cache = torch.full((2, 8, 1, 64), 7.0, device=device).to(dtype)
        v_cache = k_cache.clone()
        if impl == "reference":
            reference.write_kv_cache(key, value, k_cache, v_cache, slots)
        else:
            with fastcot.backend(backend):
                fastcot.ops.write_kv_cache(key, value, k_cache, v_cache, slots)
        caches.append((k_cache, v_cache))
    for want, got in zip(*caches):
        assert torch.equal(want, got)


# --- decode --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (8, 2), (16, 2)])  # GQA 1, 4, 8
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [8, 16, 64])
def test_decode_matches_reference(backend, dtype, q_heads, kv_heads, head_dim, block_size, device):
    seq_lens = [0, 1, 77, 3 * block_size, 200]  # empty, single, not a block multiple
    num_blocks = sum(-(-n // block_size) for n in seq_lens) + 3
    k_cache, v_cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, device)
    tables, lens = make_tables(seq_lens, block_size, num_blocks, device)
    q = torch.randn(len(seq_lens), q_heads, head_dim, device=device).to(dtype)
    out = poisoned(q.shape, dtype, device)
    with fastcot.backend(backend):
        result = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, out=out)
    assert result is out
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(dtype, expected))
    assert (out[0] == 0).all()  # length 0 gives zeros


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size,head_dim", [(256, 256), (128, 96), (32, 80)])
def test_decode_large_blocks_and_other_head_sizes(backend, block_size, head_dim, device):
    dtype = DTYPES[-1]
    seq_lens = [block_size + 3, 1]
    num_blocks = 5
    k_cache, v_cache = make_cache(num_blocks, block_size, 2, head_dim, dtype, device)
    tables, lens = make_tables(seq_lens, block_size, num_blocks, device, spare_blocks=0)
    q = torch.randn(2, 8, head_dim, device=device).to(dtype)
    with fastcot.backend(backend):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale=0.07)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, 0.07, compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(dtype, expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_fp8_cache(backend, device):
    dtype = DTYPES[-1]
    k_scale, v_scale = 0.02, 0.03
    k_cache, v_cache = make_cache(40, 16, 2, 128, dtype, device, fp8_scale=k_scale)
    v_cache = (v_cache.float() * k_scale / v_scale).to(FP8)
    tables, lens = make_tables([300, 5, 0], 16, 40, device)
    q = torch.randn(3, 8, 128, device=device).to(dtype)
    with fastcot.backend(backend):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, k_scale=k_scale, v_scale=v_scale)
    expected = reference.paged_decode_attention(
        q.double(), k_cache, v_cache, tables, lens, k_scale=k_scale, v_scale=v_scale, compute_dtype=torch.float64
    )
    assert_close(out, expected, **tolerance(FP8, expected))


@pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_counts_agree(dtype, device):
    k_cache, v_cache = make_cache(64, 16, 2, 64, dtype, device)
    tables, lens = make_tables([500, 1, 0, 130], 16, 64, device)
    q = torch.randn(4, 8, 64, device=device).to(dtype)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, compute_dtype=torch.float64)
    outs = []
    for splits in (1, 3, 5, 8, 52, 63, 64):  # counts the occupancy rule picks; 64 leaves most splits empty
        out = poisoned(q.shape, dtype, device)
        paged_decode_triton(q, k_cache, v_cache, tables, lens, out, 64 ** -0.5, 1.0, 1.0, num_splits=splits)
        assert_close(out, expected, **tolerance(dtype, expected))
        outs.append(out)
    for other in outs[1:]:
        assert_close(other, outs[0], **tolerance(dtype, expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_extreme_logits_give_no_nan(backend, device):
    dtype = DTYPES[0] if DTYPES[0] != torch.bfloat16 else torch.float16
    k_cache, v_cache = make_cache(8, 16, 1, 64, dtype, device)
    tables, lens = make_tables([100, 1], 16, 8, device)
    q = (torch.randn(2, 4, 64, device=device) * 300).to(dtype)  # logits in the thousands
    with fastcot.backend(backend):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens)
    assert torch.isfinite(out).all()
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(dtype, expected))


@pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("cache", ["same", "fp8"])
@pytest.mark.parametrize("block_size", [8, 256])
def test_decode_pipeline_tile_edges(cache, block_size, device):
    """The kernel reads a tile's block-table entries one iteration ahead and the pipeliner has
    the next tile's K and V in flight: lengths one short of, at and past tile edges, in one
    split and across several, against shuffled tables whose unused columns hold garbage (-7),
    which a read past a split's end would hit."""
    torch.manual_seed(block_size)
    fp8 = cache == "fp8"
    # a 16-bit query with float8: the tiles of the pairs path (128 tokens) where the device has it
    dtype, head_dim, hkv, group = DTYPES[-1] if fp8 else DTYPES[0], 64, 2, 4
    _, block_n = _decode_tiles(head_dim, fp8, fp8 and _fp8_pairs(head_dim, sm_version(torch.device(device))))
    seq_lens = [block_n - 1, block_n, block_n + 1, 2 * block_n, 3 * block_n + 5, 0]
    num_blocks = sum(-(-n // block_size) for n in seq_lens) + 2
    k_scale, v_scale = (0.3, 0.2) if fp8 else (1.0, 1.0)
    k_cache, v_cache = make_cache(num_blocks, block_size, hkv, head_dim, dtype, device,
                                  fp8_scale=k_scale if fp8 else None)
    if fp8:
        v_cache = (v_cache.float() * k_scale / v_scale).to(FP8)
    tables, lens = make_tables(seq_lens, block_size, num_blocks, device)
    q = torch.randn(len(seq_lens), hkv * group, head_dim, device=device).to(dtype)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, k_scale=k_scale,
                                                v_scale=v_scale, compute_dtype=torch.float64)
    for splits in (1, 2, 3):
        out = poisoned(q.shape, dtype, device)
        paged_decode_triton(q, k_cache, v_cache, tables, lens, out, head_dim ** -0.5, k_scale, v_scale,
                            num_splits=splits)
        assert_close(out, expected, **tolerance(FP8 if fp8 else dtype, expected))
        assert (out[-1] == 0).all()


def test_decode_split_choice_fills_the_chip_and_depends_on_shapes_only():
    assert decode_num_splits(1, 8, 131072, 132) == 64  # 512 programs: 3.9 of 4 per SM (6 fit)
    assert decode_num_splits(1, 8, 1024, 132) == 4  # capacity caps the split count
    assert decode_num_splits(1, 8, 32768, 108, arch=80) == 52  # 416 of 432 slots
    assert decode_num_splits(64, 8, 8192, 108, arch=80) == 5  # 2560 programs: 5.93 of 6 waves
    assert decode_num_splits(64, 8, 8192, 132, kv_fp8=True) == 1  # 512 programs: 1.94 of 2 waves of 264
    assert decode_num_splits(256, 8, 131072, 132) == 3  # 2.6 waves unsplit: 7.8 of 8 once split
    assert decode_num_splits(512, 8, 131072, 132) == 1  # four waves or more: no split
    for batch in (1, 3, 64):
        for sms, arch in ((132, 90), (108, 80)):
            for fp8 in (False, True):
                splits = decode_num_splits(batch, 8, 131072, sms, arch=arch, kv_fp8=fp8)
                slots = sms * TRITON_DECODE_BLOCKS_PER_SM[(arch, fp8)]
                grid = batch * 8 * splits
                assert 1 <= splits <= 64
                # whole waves, or one wave whose busiest SM is nearly as full as the rest
                assert grid / (-(-grid // slots) * slots) >= 0.95 or (grid <= slots and grid / sms / -(-grid // sms) >= 0.9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_empty_batch(backend, device):
    k_cache, v_cache = make_cache(4, 8, 1, 64, torch.float32, device)
    q = torch.randn(0, 2, 64, device=device)
    with fastcot.backend(backend):
        out = fastcot.ops.paged_decode_attention(
            q, k_cache, v_cache, torch.zeros(0, 3, dtype=torch.int32, device=device),
            torch.zeros(0, dtype=torch.int32, device=device),
        )
    assert out.shape == (0, 2, 64)


def _strided(t: torch.Tensor, fill: int) -> torch.Tensor:
    """t's values in every other element of a buffer whose gaps hold `fill`."""
    buf = torch.full((2 * t.numel(),), fill, dtype=t.dtype, device=t.device)
    view = buf[1::2].view(t.shape) if t.dim() == 1 else buf.view(*t.shape[:-1], -1)[..., 1::2]
    view.copy_(t)
    return view


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["seq_lens", "block_tables", "block_tables_column_major"])
def test_decode_index_tensors_in_any_layout(backend, which, device):
    """seq_lens and block_tables views whose elements are not adjacent are read as the values
    they show. (A strided seq_lens once reached the kernel as is: wrong output, or a
    segmentation fault once unused block-table entries held large ids.)"""
    dtype = DTYPES[-1]
    k_cache, v_cache = make_cache(16, 8, 2, 64, dtype, device)
    tables, lens = make_tables([37, 0, 5, 20], 8, 16, device)
    if which == "seq_lens":
        lens = _strided(lens, 0)  # read as is, every other length would be 0
    elif which == "block_tables":
        tables = _strided(tables, 3)
    else:
        tables = tables.t().contiguous().t()
    q = torch.randn(4, 8, 64, device=device).to(dtype)
    with fastcot.backend(backend):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(dtype, expected))


@pytest.mark.skipif(not TRITON_HERE, reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("cache", ["bf16", "fp8"])
def test_bfloat16_query(cache, device):
    """bfloat16 queries over bfloat16 and float8 caches, decode and prefill. (Under the
    interpreter these were garbage, ~1e9 off: it has no bfloat16 arithmetic, so a dot of
    bfloat16 operands multiplied their raw bits as integers. The launchers now ask for float32
    dots there; on a GPU the bfloat16 tensor-core path is unchanged.)"""
    fp8 = cache == "fp8"
    k_cache, v_cache = make_cache(6, 8, 1, 64, torch.bfloat16, device, fp8_scale=0.5 if fp8 else None)
    scales = dict(k_scale=0.5, v_scale=0.5) if fp8 else {}
    tables, lens = make_tables([5, 19], 8, 6, device)
    q = torch.randn(2, 4, 64, device=device).to(torch.bfloat16)
    with fastcot.backend("triton"):
        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, **scales)
    expected = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, **scales,
                                                compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(torch.bfloat16, expected))
    cu = torch.tensor([0, 2, 9], dtype=torch.int32, device=device)
    qp = torch.randn(9, 4, 64, device=device).to(torch.bfloat16)
    with fastcot.backend("triton"):
        out = fastcot.ops.paged_prefill_attention(qp, k_cache, v_cache, tables, cu, lens, **scales)
    expected = reference.paged_prefill_attention(qp.double(), k_cache, v_cache, tables, cu, lens, **scales,
                                                 compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(torch.bfloat16, expected))


# --- prefill -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_heads,kv_heads", [(2, 2), (8, 2)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("prefix", ["none", "cached"])
def test_prefill_matches_reference(backend, dtype, q_heads, kv_heads, causal, prefix, device):
    block_size, head_dim = (16, 64) if prefix == "none" else (8, 128)
    q_lens = [70, 1, 0, 33]
    cached = [0, 0, 0, 0] if prefix == "none" else [19, 40, 5, 64]
    seq_lens = [a + b for a, b in zip(q_lens, cached)]
    num_blocks = sum(-(-n // block_size) for n in seq_lens) + 2
    k_cache, v_cache = make_cache(num_blocks, block_size, kv_heads, head_dim, dtype, device)
    tables, lens = make_tables(seq_lens, block_size, num_blocks, device)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32, device=device)
    q = torch.randn(sum(q_lens), q_heads, head_dim, device=device).to(dtype)
    out = poisoned(q.shape, dtype, device)
    with fastcot.backend(backend):
        fastcot.ops.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, causal=causal, out=out)
    expected = reference.paged_prefill_attention(
        q.double(), k_cache, v_cache, tables, cu, lens, causal=causal, compute_dtype=torch.float64
    )
    assert_close(out, expected, **tolerance(dtype, expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["cu_seqlens_q", "seq_lens", "block_tables"])
def test_prefill_index_tensors_in_any_layout(backend, which, device):
    """cu_seqlens_q, seq_lens and block_tables views whose elements are not adjacent are read as
    the values they show. (Strided cu_seqlens_q or seq_lens once reached the kernel as is:
    segmentation faults and out-of-bounds writes.)"""
    dtype = DTYPES[-1]
    k_cache, v_cache = make_cache(16, 8, 2, 64, dtype, device)
    q_lens, seq_lens = [7, 0, 3], [30, 4, 3]
    tables, lens = make_tables(seq_lens, 8, 16, device)
    cu = torch.tensor([0, 7, 7, 10], dtype=torch.int32, device=device)
    if which == "cu_seqlens_q":
        cu = _strided(cu, 0)
    elif which == "seq_lens":
        lens = _strided(lens, 0)
    else:
        tables = _strided(tables, 3)
    q = torch.randn(sum(q_lens), 4, 64, device=device).to(dtype)
    out = poisoned(q.shape, dtype, device)
    with fastcot.backend(backend):
        fastcot.ops.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, out=out)
    expected = reference.paged_prefill_attention(q.double(), k_cache, v_cache, tables, cu, lens,
                                                 compute_dtype=torch.float64)
    assert_close(out, expected, **tolerance(dtype, expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_last_token_equals_decode(backend, device):
    """A sequence's last prefill token attends exactly as decode does at the same length."""
    dtype = DTYPES[-1]
    k_cache, v_cache = make_cache(20, 16, 2, 64, dtype, device)
    tables, lens = make_tables([150], 16, 20, device)
    q = torch.randn(10, 8, 64, device=device).to(dtype)
    cu = torch.tensor([0, 10], dtype=torch.int32, device=device)
    with fastcot.backend(backend):
        pre = fastcot.ops.paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens)
        dec = fastcot.ops.paged_decode_attention(q[-1:], k_cache, v_cache, tables, lens)
    expected = reference.paged_decode_attention(q[-1:].double(), k_cache, v_cache, tables, lens, compute_dtype=torch.float64)
    assert_close(pre[-1:], expected, **tolerance(dtype, expected))
    assert_close(dec, expected, **tolerance(dtype, expected))


# --- registration --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    dtype = DTYPES[-1]
    k_cache, v_cache = make_cache(8, 16, 2, 64, dtype, device)
    tables, lens = make_tables([40, 3], 16, 8, device)
    q = torch.randn(2, 4, 64, device=device).to(dtype)
    out = torch.empty_like(q)
    torch.library.opcheck(torch.ops.fastcot.paged_decode_attention.default,
                          (q, k_cache, v_cache, tables, lens, out, 0.125, 1.0, 1.0, backend))
    cu = torch.tensor([0, 2, 3], dtype=torch.int32, device=device)
    qp = torch.randn(3, 4, 64, device=device).to(dtype)
    torch.library.opcheck(torch.ops.fastcot.paged_prefill_attention.default,
                          (qp, k_cache, v_cache, tables, cu, lens, torch.empty_like(qp), 0.125, True, 1.0, 1.0, 3, backend))
    key = torch.randn(3, 2, 64, device=device).to(dtype)
    slots = torch.tensor([0, 5, -1], dtype=torch.int32, device=device)
    torch.library.opcheck(torch.ops.fastcot.write_kv_cache.default,
                          (key.view(3, -1), key.view(3, -1), k_cache, v_cache, slots, 1.0, 1.0, backend))


def test_decode_compiles_without_graph_breaks():
    k_cache, v_cache = make_cache(8, 16, 2, 64, torch.float32, torch.device("cpu"))
    tables, lens = make_tables([40, 3], 16, 8, torch.device("cpu"))
    q = torch.randn(2, 4, 64)

    def step(q, key):
        fastcot.ops.write_kv_cache(key, key, k_cache, v_cache, torch.tensor([41, -1], dtype=torch.int32))
        return fastcot.ops.paged_decode_attention(q, k_cache, v_cache, tables, lens) * 2

    key = torch.randn(2, 2, 64)
    expected = step(q, key)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_close(compiled(q, key), expected, atol=1e-6, rtol=1e-6)


# --- bad input -----------------------------------------------------------------------------

class TestBadInput:
    k_cache, v_cache = make_cache(6, 16, 2, 64, torch.float32, torch.device("cpu"))
    tables, lens = make_tables([40, 3], 16, 6, torch.device("cpu"))
    q = torch.randn(2, 4, 64)

    def decode(self, **kw):
        args = dict(q=self.q, k_cache=self.k_cache, v_cache=self.v_cache, block_tables=self.tables, seq_lens=self.lens)
        args.update(kw)
        return fastcot.ops.paged_decode_attention(
            args.pop("q"), args.pop("k_cache"), args.pop("v_cache"), args.pop("block_tables"), args.pop("seq_lens"), **args
        )

    def test_heads(self):
        with pytest.raises(ValueError, match=r"multiple of num_kv_heads \(2\)"):
            self.decode(q=torch.randn(2, 3, 64))
        with pytest.raises(ValueError, match="head_dim 32 does not match"):
            self.decode(q=torch.randn(2, 4, 32))

    def test_index_dtypes(self):
        with pytest.raises(TypeError, match="block_tables must have dtype int32"):
            self.decode(block_tables=self.tables.long())
        with pytest.raises(TypeError, match="seq_lens must have dtype int32"):
            self.decode(seq_lens=self.lens.long())

    def test_tables_too_short_and_bad_entries(self):
        with pytest.raises(ValueError, match="block_tables are too short"):
            self.decode(seq_lens=torch.tensor([40, 16 * self.tables.shape[1] + 1], dtype=torch.int32))
        bad = self.tables.clone()
        bad[0, 1] = 6
        with pytest.raises(ValueError, match=r"block_tables\[0, 1\] = 6 is not a block"):
            self.decode(block_tables=bad)
        with pytest.raises(ValueError, match="seq_lens must be >= 0"):
            self.decode(seq_lens=torch.tensor([-1, 3], dtype=torch.int32))

    def test_index_checks_can_be_turned_off(self, monkeypatch):
        monkeypatch.setenv("FASTCOT_INDEX_CHECKS", "0")
        bad = self.tables.clone()
        bad[1, 2] = 99  # never read: sequence 1 has 3 tokens, all in block column 0
        self.decode(block_tables=bad)

    def test_dtype_and_scale_mismatch(self):
        with pytest.raises(TypeError, match="q must have the cache's dtype"):
            self.decode(q=self.q.half())
        with pytest.raises(ValueError, match="applies only to float8_e4m3fn caches"):
            self.decode(k_scale=0.5)
        with pytest.raises(TypeError, match="k_scale must be a Python float"):
            self.decode(k_scale=torch.tensor(0.5))
        with pytest.raises(TypeError, match="v_cache must have dtype"):
            self.decode(v_cache=self.v_cache.half())

    def test_cache_layout(self):
        with pytest.raises(ValueError, match="power of two from 8 to 256"):
            self.decode(k_cache=torch.zeros(6, 12, 2, 64), v_cache=torch.zeros(6, 12, 2, 64))
        with pytest.raises(ValueError, match="k_cache must be 4-D"):
            self.decode(k_cache=self.k_cache[0])

    def test_out(self):
        with pytest.raises(ValueError, match="out must have shape"):
            self.decode(out=torch.empty(2, 4, 63))

    def test_write_kv_cache(self):
        key = torch.randn(3, 2, 64)
        slots = torch.tensor([0, 1, 6 * 16], dtype=torch.int32)
        with pytest.raises(ValueError, match=r"slot_mapping values must lie in \[-1, 96\)"):
            fastcot.ops.write_kv_cache(key, key, self.k_cache, self.v_cache, slots)
        with pytest.raises(TypeError, match="slot_mapping must have dtype"):
            fastcot.ops.write_kv_cache(key, key, self.k_cache, self.v_cache, slots.float())
        with pytest.raises(ValueError, match="key must have shape"):
            fastcot.ops.write_kv_cache(key[:, :1], key[:, :1], self.k_cache, self.v_cache, slots)
        with pytest.raises(TypeError, match="k_cache must have key's dtype"):
            fastcot.ops.write_kv_cache(key.half(), key.half(), self.k_cache, self.v_cache, slots)

    def test_prefill_layout(self):
        qp = torch.randn(5, 4, 64)
        with pytest.raises(ValueError, match="cu_seqlens_q must rise from 0 to T=5"):
            fastcot.ops.paged_prefill_attention(qp, self.k_cache, self.v_cache, self.tables,
                                                torch.tensor([0, 2, 4], dtype=torch.int32), self.lens)
        with pytest.raises(ValueError, match="sequence 1 has 4 new tokens but seq_lens"):
            fastcot.ops.paged_prefill_attention(qp, self.k_cache, self.v_cache, self.tables,
                                                torch.tensor([0, 1, 5], dtype=torch.int32), self.lens)
        with pytest.raises(ValueError, match="max_query_len=2"):
            fastcot.ops.paged_prefill_attention(qp, self.k_cache, self.v_cache, self.tables,
                                                torch.tensor([0, 3, 5], dtype=torch.int32), self.lens,
                                                max_query_len=2)
