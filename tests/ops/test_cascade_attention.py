"""Shared-prefix (cascade) decode against plain paged decode: the float64 reference of
`paged_decode_attention` on the same rows is the ground truth, so every case checks that
reading the shared blocks once per group changes nothing."""

import os
import random

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops.cascade_attention import cascade_decode_triton, cascade_splits, prefix_tile

FP8 = torch.float8_e4m3fn
ON_GPU = torch.cuda.is_available()
TRITON_HERE = ON_GPU or _backend.triton_interpreter_enabled()
BACKENDS = ["torch"] + (["triton"] if TRITON_HERE else [])
DTYPES = [torch.float16, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]


@pytest.fixture(autouse=True)
def _seed_python_random():
    random.seed(0)


def build(groups, solo_lens, *, block_size, hkv, gqa, head_dim, dtype, device, pad_groups=0, fp8_scale=None,
          row_width=None):
    """A batch whose rows share prefixes as a forked request's samples do.

    `groups`: list of (shared_len, [row lengths]), each row length >= shared_len; `solo_lens`:
    rows in no group. Each group's full shared blocks are the same physical blocks in its
    rows' tables; a shared length ending inside a block gives each row its own copy of that
    block (copy-on-write after a fork) holding the shared tokens and then its own. Rows are
    shuffled in the batch. Returns (q, k_cache, v_cache, block_tables, seq_lens, group args)."""
    rows = [(g, n) for g, (_, lens) in enumerate(groups) for n in lens] + [(-1, n) for n in solo_lens]
    random.shuffle(rows)
    bs = block_size
    blocks_needed = sum(-(-s // bs) for s, _ in groups) + sum(-(-n // bs) + 1 for _, n in rows) + 2
    order = iter(torch.randperm(blocks_needed).tolist())
    shape = (blocks_needed, bs, hkv, head_dim)
    k, v = torch.randn(shape), torch.randn(shape)
    shared_tables = []
    for shared, _ in groups:
        shared_tables.append([next(order) for _ in range(-(-shared // bs))])
    width = row_width or max([-(-n // bs) for _, n in rows] + [1])
    tables = torch.full((len(rows), width), 10**6, dtype=torch.int32)  # garbage past the end
    for b, (g, n) in enumerate(rows):
        shared = groups[g][0] if g >= 0 else 0
        full = shared // bs
        own = shared_tables[g][:full] if g >= 0 else []
        own = own + [next(order) for _ in range(-(-n // bs) - full)]
        if g >= 0 and shared % bs:  # the fork's partial block: a private copy of the shared tokens
            src, dst = shared_tables[g][full], own[full]
            k[dst, : shared % bs], v[dst, : shared % bs] = k[src, : shared % bs], v[src, : shared % bs]
        tables[b, : len(own)] = torch.tensor(own, dtype=torch.int32)
    num_groups = len(groups) + pad_groups
    max_rows = max([len(lens) for _, lens in groups] + [1])
    group_rows = torch.full((num_groups, max_rows), -1, dtype=torch.int32)
    shared_w = max([len(t) for t in shared_tables] + [1])
    shared_block_tables = torch.zeros((num_groups, shared_w), dtype=torch.int32)
    shared_lens = torch.zeros(num_groups, dtype=torch.int32)
    for g, (shared, _) in enumerate(groups):
        members = [b for b, (gg, _) in enumerate(rows) if gg == g]
        random.shuffle(members)
        group_rows[g, : len(members)] = torch.tensor(members, dtype=torch.int32)
        shared_lens[g] = shared
        if shared_tables[g]:
            shared_block_tables[g, : len(shared_tables[g])] = torch.tensor(shared_tables[g], dtype=torch.int32)
    row_groups = torch.tensor([g for g, _ in rows], dtype=torch.int32)
    seq_lens = torch.tensor([n for _, n in rows], dtype=torch.int32)
    q = torch.randn(len(rows), hkv * gqa, head_dim)
    if fp8_scale is not None:
        k, v = (k / fp8_scale).to(FP8), (v / fp8_scale).to(FP8)
    else:
        k, v = k.to(dtype), v.to(dtype)
    to = lambda t: t.to(device)  # noqa: E731
    return (to(q.to(dtype)), to(k), to(v), to(tables), to(seq_lens),
            dict(group_rows=to(group_rows), shared_lens=to(shared_lens), shared_block_tables=to(shared_block_tables),
                 row_groups=to(row_groups)))


def plain_expected(q, k, v, tables, seq_lens, **scales):
    """float64 plain paged decode: the ground truth for every cascade case."""
    kd = k if k.dtype == FP8 else k.double()
    vd = v if v.dtype == FP8 else v.double()
    return reference.paged_decode_attention(q.double(), kd, vd, tables, seq_lens, compute_dtype=torch.float64,
                                            **scales)


def tolerance(dtype, expected):
    tol = TOLERANCE[torch.float16 if dtype == FP8 else dtype]
    return dict(atol=tol["atol"] * max(1.0, expected.abs().max().item()), rtol=tol["rtol"])


def run(backend, q, k, v, tables, seq_lens, groups, **kw):
    out = poisoned(q.shape, q.dtype, q.device)
    with fastcot.backend(backend):
        got = fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **groups, out=out, **kw)
    assert got is out
    return out


# (block_size, gqa, head_dim, groups [(shared_len, row lengths)], rows in no group)
CASES = [
    pytest.param(16, 4, 64, [], [5, 0, 33], id="no-groups"),
    pytest.param(16, 4, 64, [(0, [5, 17, 1])], [9], id="shared-0-blocks"),
    pytest.param(16, 4, 64, [(16, [16, 17, 40])], [], id="shared-1-block-empty-suffix"),
    pytest.param(8, 1, 64, [(61, [61, 70, 99, 64, 62])], [13, 0], id="shared-many-partial-gqa1"),
    pytest.param(32, 8, 128, [(96, [97, 130]), (45, [45, 50, 77])], [33], id="two-groups-gqa8-d128"),
    pytest.param(256, 4, 64, [(300, [301, 555, 300])], [7], id="block-256"),
    pytest.param(64, 8, 64, [(70, [71 + i for i in range(10)])], [], id="ten-rows-two-tiles-gqa8"),
    pytest.param(16, 4, 128, [(33, [40])], [3, 50], id="group-of-one"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size,gqa,head_dim,groups,solo", CASES)
def test_equals_plain_decode(backend, dtype, block_size, gqa, head_dim, groups, solo, device):
    q, k, v, tables, seq_lens, g = build(groups, solo, block_size=block_size, hkv=2, gqa=gqa, head_dim=head_dim,
                                         dtype=dtype, device=device)
    expected = plain_expected(q, k, v, tables, seq_lens)
    assert_close(run(backend, q, k, v, tables, seq_lens, g), expected, **tolerance(dtype, expected))


@pytest.mark.skipif(not TRITON_HERE, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("prefix_splits,suffix_splits", [(1, 1), (3, 1), (1, 4), (5, 3)])
def test_forced_splits_and_padding_groups(prefix_splits, suffix_splits, device):
    dtype = DTYPES[0]
    q, k, v, tables, seq_lens, g = build([(83, [90, 83, 200]), (8, [9, 8])], [0, 41], block_size=8, hkv=2, gqa=4,
                                         head_dim=64, dtype=dtype, device=device, pad_groups=2)
    expected = plain_expected(q, k, v, tables, seq_lens)
    out = poisoned(q.shape, q.dtype, q.device)
    cascade_decode_triton(q, k, v, tables, seq_lens, g["group_rows"], g["shared_lens"], g["shared_block_tables"],
                          g["row_groups"], out, 64 ** -0.5, 1.0, 1.0, prefix_splits=prefix_splits,
                          suffix_splits=suffix_splits)
    assert_close(out, expected, **tolerance(dtype, expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_cache(backend, device):
    dtype = DTYPES[-1]
    scales = dict(k_scale=0.5, v_scale=0.25)
    q, k, v, tables, seq_lens, g = build([(40, [41, 60, 40])], [25], block_size=16, hkv=2, gqa=4, head_dim=64,
                                         dtype=dtype, device=device, fp8_scale=0.5)
    expected = plain_expected(q, k, v, tables, seq_lens, **scales)
    assert_close(run(backend, q, k, v, tables, seq_lens, g, **scales), expected, **tolerance(FP8, expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_is_read_through_the_shared_table(backend, device):
    """The rows' own tables point elsewhere for the shared positions: the result follows the
    shared table (the cascade reference), not the rows' tables (plain decode)."""
    dtype = DTYPES[0]
    q, k, v, tables, seq_lens, g = build([(32, [40, 50])], [], block_size=16, hkv=1, gqa=4, head_dim=64,
                                         dtype=dtype, device=device)
    tables[:, :2] = tables[:, 2:3]  # the rows' first blocks now name their third block
    expected = reference.cascade_decode_attention(q.double(), k.double(), v.double(), tables, seq_lens, **g,
                                                  compute_dtype=torch.float64)
    plain = plain_expected(q, k, v, tables, seq_lens)
    assert (expected - plain).abs().max() > 0.05
    assert_close(run(backend, q, k, v, tables, seq_lens, g), expected, **tolerance(dtype, expected))


def test_randomized_against_plain_decode(device):
    """Configurations drawn at random (FASTCOT_CASCADE_CASES of them, default 4): block size,
    GQA, head size, groups with partial shared blocks, empty suffixes and lone rows."""
    backend = BACKENDS[-1]
    rng = random.Random(int(os.environ.get("FASTCOT_CASCADE_SEED", "13")))
    for _ in range(int(os.environ.get("FASTCOT_CASCADE_CASES", "4"))):
        bs = rng.choice([8, 16, 32, 64, 128, 256])
        gqa, head_dim = rng.choice([1, 4, 8]), rng.choice([64, 128])
        groups = []
        for _ in range(rng.randint(0, 3)):
            shared = rng.choice([0, bs, rng.randint(1, 3 * bs)])
            groups.append((shared, [shared + rng.choice([0, 1, rng.randint(0, 2 * bs)])
                                    for _ in range(rng.randint(1, 5))]))
        solo = [rng.randint(0, 2 * bs) for _ in range(rng.randint(0, 2))]
        if not groups and not solo:
            solo = [1]
        dtype = rng.choice(DTYPES)
        q, k, v, tables, seq_lens, g = build(groups, solo, block_size=bs, hkv=rng.choice([1, 2]), gqa=gqa,
                                             head_dim=head_dim, dtype=dtype, device=device,
                                             pad_groups=rng.randint(0, 1))
        expected = plain_expected(q, k, v, tables, seq_lens)
        got = run(backend, q, k, v, tables, seq_lens, g)
        assert_close(got, expected, **tolerance(dtype, expected))


# --- argument checks (before any kernel) ----------------------------------------------------


def _valid(device):
    return build([(20, [21, 30])], [5], block_size=8, hkv=2, gqa=2, head_dim=64, dtype=DTYPES[0], device=device)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda a: a[5].update(group_rows=a[5]["group_rows"].long()), TypeError, "group_rows must have dtype int32"),
    (lambda a: a[5].update(shared_lens=a[5]["shared_lens"][:0]), ValueError, "shared_lens must have 1 entries"),
    (lambda a: a[5].update(row_groups=a[5]["row_groups"][:2]), ValueError, "row_groups must have 3 entries"),
    (lambda a: a[5].update(shared_block_tables=a[5]["shared_block_tables"][0]), ValueError,
     "shared_block_tables must be 2-D"),
    (lambda a: a[5]["row_groups"].fill_(-1), ValueError, "row_groups of that row is -1"),
    (lambda a: a[5]["row_groups"].masked_fill_(a[5]["row_groups"] < 0, 0), ValueError, "exactly once"),
    (lambda a: a[5]["row_groups"].fill_(3), ValueError, "row_groups entries must be -1 or a group"),
    (lambda a: a[5]["group_rows"].fill_(7), ValueError, "group_rows entries must be -1 or a row"),
    (lambda a: a[5]["shared_lens"].fill_(22), ValueError, "more than seq_lens"),
    (lambda a: a[5]["shared_lens"].fill_(-1), ValueError, "shared_lens must be >= 0"),
    (lambda a: a[5]["shared_lens"].fill_(10**4), ValueError, "shared_block_tables are too short"),
    (lambda a: a[5]["shared_block_tables"].fill_(-3), ValueError, "shared_block_tables\\[0, 0\\] = -3"),
])
def test_bad_groups_are_refused(mutate, error, match, device):
    args = list(_valid(device))
    mutate(args)
    q, k, v, tables, seq_lens, g = args
    with pytest.raises(error, match=match):
        fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **g)


def test_bad_tensors_are_refused(device):
    q, k, v, tables, seq_lens, g = _valid(device)
    with pytest.raises(TypeError, match="q must have dtype float16, bfloat16, float32"):
        fastcot.ops.cascade_decode_attention(q.double(), k, v, tables, seq_lens, **g)
    other = torch.float16 if q.dtype != torch.float16 else torch.float32
    with pytest.raises(TypeError, match="q must have the cache's dtype"):
        fastcot.ops.cascade_decode_attention(q.to(other), k, v, tables, seq_lens, **g)
    with pytest.raises(ValueError, match="out must have shape"):
        fastcot.ops.cascade_decode_attention(q, k, v, tables, seq_lens, **g, out=q[:1].clone())
    with pytest.raises(ValueError, match="block_tables must have 3 rows"):
        fastcot.ops.cascade_decode_attention(q, k, v, tables[:2], seq_lens, **g)


def test_split_rule_reads_only_shapes():
    assert cascade_splits(programs=16, capacity=32768, sms=132) == 33
    assert cascade_splits(programs=10_000, capacity=32768, sms=132) == 1
    assert cascade_splits(programs=1, capacity=300, sms=132) == 1  # at least 256 tokens a split
    assert cascade_splits(programs=1, capacity=10**6, sms=132) == 64
    assert prefix_tile(group=8, max_rows=32) == (8, 64)
    assert prefix_tile(group=4, max_rows=3) == (3, 16)
    assert prefix_tile(group=1, max_rows=100) == (64, 64)


def test_registered_op_passes_opcheck(device):
    """Schema, fake (meta) implementation and mutation of `out` as torch.library checks them."""
    q, k, v, tables, seq_lens, g = _valid(device)
    out = torch.empty_like(q)
    args = (q, k, v, tables, seq_lens, g["group_rows"], g["shared_lens"], g["shared_block_tables"],
            g["row_groups"], out, 0.125, 1.0, 1.0, "torch")
    torch.library.opcheck(torch.ops.fastcot.cascade_decode_attention.default, args)
