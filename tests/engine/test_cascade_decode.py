"""Shared-prefix (cascade) decode in the engine: the groups it finds, and token ids equal with
it forced on and off (n samples of a request, prefix-cache hits)."""

import pytest
import torch

import fastcot
from fastcot import LLM, SamplingParams
from fastcot.engine.metadata import shared_prefix_groups, shared_prefix_tensors
from fastcot.engine.model_runner import cascade_settings
from fastcot.ops import _backend

pytest.importorskip("transformers")


def test_groups_take_whole_common_blocks_only():
    tables = [[7, 8, 9, 20], [5, 6], [7, 8, 9, 21], [7, 8, 30], [5, 40]]
    lens = [60, 20, 55, 40, 30]
    groups = shared_prefix_groups(tables, lens, 16, min_shared_tokens=1)
    assert groups == [(32, [7, 8], [0, 2, 3]), (16, [5], [1, 4])]
    # Capped by the shortest row; too little sharing drops the group.
    assert shared_prefix_groups([[1, 2], [1, 2]], [20, 17], 16, min_shared_tokens=1) == [(17, [1, 2], [0, 1])]
    assert shared_prefix_groups(tables, lens, 16, min_shared_tokens=17) == [(32, [7, 8], [0, 2, 3])]
    assert shared_prefix_groups([[1], [2], []], [5, 5, 0], 16, min_shared_tokens=1) == []


def test_groups_split_where_requests_diverge_when_that_saves_more():
    # Two requests of 3 samples behind one cached 2-block system prompt: each request's own
    # 2 prompt blocks are shared by its samples only.
    tables = [[1, 2, 10, 11, 30 + i] for i in range(3)] + [[1, 2, 20, 21, 40 + i] for i in range(3)]
    groups = shared_prefix_groups(tables, [70] * 6, 16, min_shared_tokens=1)
    assert groups == [(64, [1, 2, 10, 11], [0, 1, 2]), (64, [1, 2, 20, 21], [3, 4, 5])]
    # Pairs diverging one block later: all four save 3 x 32 token reads, the pairs 2 x 48; a tie
    # keeps the whole group.
    tables = [[1, 2, 10, 30], [1, 2, 10, 31], [1, 2, 20, 40], [1, 2, 20, 41]]
    assert shared_prefix_groups(tables, [60] * 4, 16, min_shared_tokens=1) == [(32, [1, 2], [0, 1, 2, 3])]


def test_big_groups_split_into_near_equal_parts_of_two_or_more():
    rows = 37
    groups = shared_prefix_groups([[3, 4, r + 10] for r in range(rows)], [40] * rows, 16, min_shared_tokens=1,
                                  max_rows=16)
    assert [len(g[2]) for g in groups] == [13, 12, 12]
    assert sorted(r for g in groups for r in g[2]) == list(range(rows))
    t = shared_prefix_tensors(groups, rows + 2, "cpu")
    assert t.group_rows.shape == (3, 13) and int((t.group_rows >= 0).sum()) == rows
    assert t.row_groups[-2:].tolist() == [-1, -1] and t.shared_lens.tolist() == [32] * 3


def test_settings(monkeypatch):
    monkeypatch.delenv("FASTCOT_CASCADE_DECODE", raising=False)
    monkeypatch.delenv("FASTCOT_CASCADE_MIN_SHARED_TOKENS", raising=False)
    assert cascade_settings(torch.device("cpu"), None, None) == (False, 512)
    assert cascade_settings(torch.device("cuda"), None, 3) == (True, 3)
    with fastcot.backend("cuda"):  # no cuda kernel for it: auto stays off
        assert cascade_settings(torch.device("cuda"), None, 3) == (False, 3)
    monkeypatch.setenv("FASTCOT_CASCADE_DECODE", "1")
    monkeypatch.setenv("FASTCOT_CASCADE_MIN_SHARED_TOKENS", "16")
    assert cascade_settings(torch.device("cpu"), None, None) == (True, 16)
    assert cascade_settings(torch.device("cpu"), False, None) == (False, 16)
    monkeypatch.setenv("FASTCOT_CASCADE_DECODE", "yes")
    with pytest.raises(ValueError, match="FASTCOT_CASCADE_DECODE"):
        cascade_settings(torch.device("cpu"), None, None)
    with pytest.raises(ValueError, match="cascade_min_shared_tokens"):
        cascade_settings(torch.device("cpu"), True, -1)


def _generate(path, batches, params, monkeypatch, *, cascade: bool, cascade_backend: str = "torch"):
    """Token ids of each request of `batches` (lists of prompts, generated one after the
    other), and per cascade call the number of rows in a group. The cascade op runs on
    `cascade_backend`, every other op on the default (torch on CPU)."""
    monkeypatch.setenv("FASTCOT_CASCADE_DECODE", "1" if cascade else "0")
    monkeypatch.setenv("FASTCOT_CASCADE_MIN_SHARED_TOKENS", "1")
    calls = []
    real = fastcot.ops.cascade_decode_attention

    def counting(*args, **kwargs):
        calls.append(int((kwargs.get("row_groups", args[8] if len(args) > 8 else None) >= 0).sum()))
        with fastcot.backend(cascade_backend):
            return real(*args, **kwargs)

    monkeypatch.setattr(fastcot.ops, "cascade_decode_attention", counting)
    llm = LLM(str(path), device="cpu", num_kv_blocks=64)
    outs = [o for prompts in batches for o in llm.generate(prompts, params, use_tqdm=False)]
    return [[c.token_ids for c in o.outputs] for o in outs], calls


BACKENDS = ["torch"] + (["triton"] if _backend.triton_interpreter_enabled() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forked_samples_equal_with_cascade_on_and_off(llama_checkpoint, backend, monkeypatch):
    path, _ = llama_checkpoint
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, 256, (37,), generator=gen).tolist()  # 2 whole blocks of 16 shared, 1 partial
    other = torch.randint(3, 256, (9,), generator=gen).tolist()
    params = [SamplingParams(n=4, temperature=1.0, max_tokens=4, seed=11, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)]
    on, calls = _generate(path, [[prompt, other]], params, monkeypatch, cascade=True, cascade_backend=backend)
    off, none = _generate(path, [[prompt, other]], params, monkeypatch, cascade=False)
    assert on == off and len({tuple(t) for t in on[0]}) > 1
    assert calls and max(calls) == 4 and not none  # the 4 samples decoded as one group, the other alone


def test_prefix_cache_hits_share_with_cascade(llama_checkpoint, monkeypatch):
    path, _ = llama_checkpoint
    gen = torch.Generator().manual_seed(6)
    system = torch.randint(3, 256, (48,), generator=gen).tolist()
    prompts = [system + torch.randint(3, 256, (n,), generator=gen).tolist() for n in (3, 11, 20)]
    greedy = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    # The first request computes the shared blocks; the next two hit them in the prefix cache.
    batches = [prompts[:1], prompts[1:]]
    on, calls = _generate(path, batches, greedy, monkeypatch, cascade=True)
    off, _ = _generate(path, batches, greedy, monkeypatch, cascade=False)
    assert on == off
    assert calls and max(calls) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_buffers_pad_groups_without_changing_results(backend):
    """The CUDA-graph path's fixed-shape group buffers (built on CPU here: no replay), filled
    for a step of 5 rows in the bucket of 8, give the same attention as the step's own groups."""
    from fastcot.engine.cuda_graphs import DecodeGraphs

    graphs = DecodeGraphs(None, None, max_batch=8, max_blocks_per_seq=6, device=torch.device("cpu"), cascade=True)
    bs, hkv, d = 8, 2, 64
    gen = torch.Generator().manual_seed(1)
    tables = [[0, 1, 2, 3], [0, 1, 2, 4], [5, 6], [0, 1, 7], [8, 9, 10]]
    lens = [30, 27, 10, 20, 17]
    groups = shared_prefix_groups(tables, lens, bs, min_shared_tokens=1)
    assert groups == [(16, [0, 1], [0, 1, 3])]
    own = shared_prefix_tensors(groups, 5, "cpu")
    graphs._copy_groups(8, 5, own)
    padded = graphs._group_views(8)
    assert padded.group_rows.shape == (4, 8) and padded.row_groups.shape == (8,)
    assert padded.group_rows[1:].eq(-1).all() and padded.shared_lens[1:].eq(0).all()
    assert padded.row_groups.tolist() == [0, 0, -1, 0, -1, -1, -1, -1]
    k = torch.randn(11, bs, hkv, d, generator=gen)
    v = torch.randn(11, bs, hkv, d, generator=gen)
    q = torch.randn(8, 4 * hkv, d, generator=gen)
    block_tables = torch.zeros(8, 6, dtype=torch.int32)
    for row, t in enumerate(tables):
        block_tables[row, : len(t)] = torch.tensor(t, dtype=torch.int32)
    seq_lens = torch.tensor(lens + [0, 0, 0], dtype=torch.int32)  # padding rows: length 0
    with fastcot.backend(backend):
        want = fastcot.ops.cascade_decode_attention(q[:5], k, v, block_tables[:5], seq_lens[:5], own.group_rows,
                                                    own.shared_lens, own.shared_block_tables, own.row_groups)
        got = fastcot.ops.cascade_decode_attention(q, k, v, block_tables, seq_lens, padded.group_rows,
                                                   padded.shared_lens, padded.shared_block_tables, padded.row_groups)
    torch.testing.assert_close(got[:5], want, rtol=1e-5, atol=1e-5)
    assert got[5:].eq(0).all()
    plain = fastcot.ops.paged_decode_attention(q[:5], k, v, block_tables[:5], seq_lens[:5])
    torch.testing.assert_close(want, plain, rtol=1e-5, atol=1e-5)


def test_randomized_groups_are_valid_and_change_no_attention():
    """Random forests of forks (requests, their samples, cached prefixes): every group's rows
    hold its shared blocks, no row is in two groups, and attention with the groups equals
    plain decode (torch reference)."""
    import random

    from fastcot.kernels import reference

    rng = random.Random(17)
    bs, hkv, d = 8, 1, 16
    formed = 0
    for _ in range(20):
        next_block = iter(range(10**6))
        tables, lens = [], []
        for _ in range(rng.randint(1, 4)):  # a cached prefix, then requests behind it, then samples
            prefix = [next(next_block) for _ in range(rng.randint(0, 3))]
            for _ in range(rng.randint(1, 3)):
                prompt = prefix + [next(next_block) for _ in range(rng.randint(0, 3))]
                for _ in range(rng.randint(1, 5)):
                    own = [next(next_block) for _ in range(rng.randint(1, 3))]
                    tables.append(prompt + own)
                    lens.append(len(prompt) * bs + rng.randint(1, len(own) * bs))
        order = list(range(len(tables)))
        rng.shuffle(order)
        tables, lens = [tables[i] for i in order], [lens[i] for i in order]
        groups = shared_prefix_groups(tables, lens, bs, min_shared_tokens=rng.choice([1, 8, 24]), max_rows=4)
        seen = set()
        formed += len(groups)
        for shared, blocks, rows in groups:
            assert 2 <= len(rows) <= 4 and not seen & set(rows)
            seen |= set(rows)
            assert shared <= min(lens[r] for r in rows) and len(blocks) == -(-shared // bs)
            assert all(tables[r][: len(blocks)] == blocks for r in rows)
        num_blocks = max(b for t in tables for b in t) + 1
        k, v = torch.randn(num_blocks, bs, hkv, d), torch.randn(num_blocks, bs, hkv, d)
        width = max(len(t) for t in tables)
        block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        seq_lens = torch.tensor(lens, dtype=torch.int32)
        q = torch.randn(len(tables), 4 * hkv, d)
        g = shared_prefix_tensors(groups, len(tables), "cpu")
        got = fastcot.ops.cascade_decode_attention(q, k, v, block_tables, seq_lens, g.group_rows, g.shared_lens,
                                                   g.shared_block_tables, g.row_groups)
        want = reference.paged_decode_attention(q, k, v, block_tables, seq_lens)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert formed >= 20  # the draws do share
