"""Block manager: accounting that never leaks, prefix hits, copy-on-write, LRU eviction,
all-or-nothing allocation, and a random-operation property test that also simulates the
cache contents (every slot a sequence reads holds exactly its own prefix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcot.engine.block_manager import BlockManager


@dataclass
class Seq:
    seq_id: int
    token_ids: list[int]
    block_table: list[int] = field(default_factory=list)


_ids = count()


def seq(tokens) -> Seq:
    return Seq(next(_ids), list(tokens))


def prefilled(bm: BlockManager, tokens) -> tuple[Seq, int]:
    """Admit a prompt and mark it computed, as the scheduler does after its prefill step."""
    s = seq(tokens)
    cached = bm.allocate(s)
    bm.cache_computed(s, len(s.token_ids))
    return s, cached


def grow(bm: BlockManager, s: Seq, token: int):
    s.token_ids.append(token)
    return bm.append_slot(s)


# ---- basics ---------------------------------------------------------------------------------


def test_allocate_and_free_account_for_every_block():
    bm = BlockManager(num_blocks=10, block_size=4)
    s = seq(range(9))
    assert bm.can_allocate(s)
    assert bm.allocate(s) == 0
    assert len(s.block_table) == 3 and bm.num_free_blocks == 7
    assert [bm.ref_count(b) for b in s.block_table] == [1, 1, 1]
    bm.free(s)
    assert s.block_table == [] and bm.num_free_blocks == 10
    bm.check_consistency([])


def test_slot_and_slots():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(range(10))
    bm.allocate(s)
    s.block_table = [5, 2, 7]  # any physical order
    assert bm.slot(s, 0) == 20 and bm.slot(s, 5) == 9 and bm.slot(s, 9) == 29
    assert bm.slots(s, 3, 6) == [23, 8, 9]


def test_appends_take_a_block_at_each_boundary():
    bm = BlockManager(num_blocks=10, block_size=4)
    s, _ = prefilled(bm, range(4))
    assert len(s.block_table) == 1
    assert grow(bm, s, 4) is None and len(s.block_table) == 2  # position 4 starts block 1
    for t in range(5, 8):
        assert grow(bm, s, t) is None and len(s.block_table) == 2
    grow(bm, s, 8)
    assert len(s.block_table) == 3
    bm.check_consistency([s])


def test_blocks_needed_tells_what_can_never_fit():
    bm = BlockManager(num_blocks=4, block_size=16)
    assert bm.num_blocks_needed(64) == 4 and bm.num_blocks_needed(65) == 5 > bm.num_blocks
    assert not bm.can_allocate(seq(range(65)))


@pytest.mark.parametrize("num_blocks, block_size", [(0, 16), (4, 0)])
def test_bad_sizes(num_blocks, block_size):
    with pytest.raises(ValueError, match="num_blocks|block_size"):
        BlockManager(num_blocks, block_size)


# ---- prefix caching -------------------------------------------------------------------------


def test_shared_prompt_prefix_reuses_blocks():
    bm = BlockManager(num_blocks=16, block_size=4)
    a, cached_a = prefilled(bm, range(10))
    b, cached_b = prefilled(bm, [*range(9), 99, 100])
    assert (cached_a, cached_b) == (0, 8)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert [bm.ref_count(x) for x in a.block_table] == [2, 2, 1]
    assert bm.num_free_blocks == 16 - 4
    bm.check_consistency([a, b])


def test_no_hits_on_blocks_not_yet_computed():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(range(12))
    bm.allocate(a)  # prefill not run yet: its blocks hold nothing
    assert bm.allocate(seq(range(12))) == 0
    bm.cache_computed(a, 5)  # a chunked prefill got through the first block
    assert bm.allocate(seq(range(12))) == 4


def test_last_token_is_never_a_cache_hit():
    bm = BlockManager(num_blocks=16, block_size=4)
    prefilled(bm, range(8))
    again = seq(range(8))
    assert bm.allocate(again) == 4  # block 1 is cached too, but its last token must yield logits
    assert len(again.block_table) == 2


def test_freed_blocks_stay_cached_until_reallocated():
    bm = BlockManager(num_blocks=6, block_size=4)
    a, _ = prefilled(bm, range(12))
    first_blocks = a.block_table[:2]
    bm.free(a)
    assert bm.num_free_blocks == 6 and bm.num_cached_blocks == 3
    b, cached = prefilled(bm, [*range(8), 50, 51])
    assert cached == 8 and b.block_table[:2] == first_blocks
    bm.check_consistency([b])


def test_preempted_sequence_hits_its_own_generated_blocks():
    bm = BlockManager(num_blocks=20, block_size=4)
    s, _ = prefilled(bm, range(6))
    for t in range(100, 111):  # 17 tokens: blocks 0-3 full, written
        grow(bm, s, t)
    bm.free(s)  # preempted by recompute
    again = Seq(s.seq_id, list(s.token_ids))
    assert bm.allocate(again) == 16


def test_disabled_prefix_caching_never_hits():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    prefilled(bm, range(12))
    assert prefilled(bm, range(12))[1] == 0 and bm.num_cached_blocks == 0


def test_reset_prefix_cache_forgets_unused_blocks_only():
    bm = BlockManager(num_blocks=16, block_size=4)
    kept, _ = prefilled(bm, range(8))
    dropped, _ = prefilled(bm, range(50, 58))
    bm.free(dropped)
    assert bm.reset_prefix_cache() == 2
    again_dropped, cached_dropped = prefilled(bm, range(50, 58))
    again_kept, cached_kept = prefilled(bm, range(8))
    assert (cached_dropped, cached_kept) == (0, 4)
    bm.check_consistency([kept, again_dropped, again_kept])


# ---- eviction -------------------------------------------------------------------------------


def test_eviction_takes_uncached_blocks_first_then_least_recently_freed():
    bm = BlockManager(num_blocks=6, block_size=2)
    a, _ = prefilled(bm, range(0, 5))  # blocks: 2 full (cached) + 1 partial
    b, _ = prefilled(bm, range(10, 15))
    a_full = a.block_table[:2]
    bm.free(a)
    bm.free(b)  # evictable order: a's full blocks (tail first), then b's; 2 partial blocks uncached
    c = seq(range(20, 24))
    bm.allocate(c)  # 2 blocks: the uncached ones
    assert bm.num_cached_blocks == 4
    d = seq(range(30, 34))
    bm.allocate(d)  # evicts a's blocks, tail first
    assert sorted(d.block_table) == sorted(a_full) and d.block_table[0] == a_full[1]
    assert bm.num_cached_blocks == 2
    bm.free(c)
    assert bm.allocate(seq(range(10, 15))) == 4  # b's prefix survived


def test_a_hit_refreshes_a_block_in_the_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, _ = prefilled(bm, range(0, 3))  # 1 cached + 1 uncached block
    b, _ = prefilled(bm, range(10, 13))
    bm.free(a)
    bm.free(b)  # evictable: a0 then b0
    c, cached = prefilled(bm, range(0, 3))  # revives a0, takes a free block
    assert cached == 2
    bm.free(c)  # a0 is now the most recently freed
    d = seq(range(20, 28))
    assert bm.num_free_blocks == 4 and bm.can_allocate(d)
    e = seq(range(40, 43))
    bm.allocate(e)  # two blocks: the two uncached ones
    f = seq(range(50, 51))
    bm.allocate(f)  # one more: must evict b0, not the recently used a0
    assert bm.num_cached_blocks == 1  # b0 is gone
    bm.free(e)
    assert bm.allocate(seq(range(0, 3))) == 2


# ---- running out ----------------------------------------------------------------------------


def test_allocation_is_all_or_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)
    a, _ = prefilled(bm, range(12))
    big = seq(range(100, 108))
    assert not bm.can_allocate(big)
    with pytest.raises(RuntimeError, match="cannot allocate 2 blocks"):
        bm.allocate(big)
    assert big.block_table == [] and bm.num_free_blocks == 1
    shares = seq([*range(8), 7, 7, 7, 7, 7])  # 2 hits on blocks in use + 2 new > 1 free
    assert not bm.can_allocate(shares)
    fits = seq([*range(8), 1, 2])  # 2 hits in use + 1 new
    assert bm.can_allocate(fits) and bm.allocate(fits) == 8
    bm.check_consistency([a, fits])


def test_append_is_all_or_nothing():
    bm = BlockManager(num_blocks=2, block_size=2)
    s, _ = prefilled(bm, range(4))
    s.token_ids.append(9)
    assert not bm.can_append(s)
    with pytest.raises(RuntimeError, match="needs 1 blocks, 0 free"):
        bm.append_slot(s)
    assert len(s.block_table) == 2
    bm.check_consistency([s])


def test_cow_needs_a_free_block_too():
    bm = BlockManager(num_blocks=2, block_size=4)
    parent, _ = prefilled(bm, range(6))
    child = Seq(next(_ids), list(parent.token_ids))
    bm.fork(parent, child)
    parent.token_ids.append(1)
    assert not bm.can_append(parent)  # the shared partial block must be copied: no block for it
    bm.free(child)  # preempted
    assert bm.can_append(parent) and bm.append_slot(parent) is None  # last owner: in place
    bm.check_consistency([parent])


# ---- fork and copy-on-write -----------------------------------------------------------------


def test_copy_on_write_after_fork():
    bm = BlockManager(num_blocks=10, block_size=4)
    parent, _ = prefilled(bm, range(6))
    child = Seq(next(_ids), list(parent.token_ids))
    bm.fork(parent, child)
    assert child.block_table == parent.block_table and bm.ref_count(parent.block_table[1]) == 2
    shared = parent.block_table[1]
    src, dst = grow(bm, parent, 7)
    assert src == shared and dst == parent.block_table[1] != shared
    assert parent.block_table[0] == child.block_table[0]  # the full block stays shared
    assert bm.ref_count(src) == 1 and bm.ref_count(dst) == 1
    assert grow(bm, child, 8) is None and child.block_table[1] == shared
    bm.check_consistency([parent, child])


@pytest.mark.parametrize("prompt_len", [4096, 4100])
def test_32_forks_of_a_4k_prompt_share_its_blocks(prompt_len):
    block_size, n = 16, 32
    bm = BlockManager(num_blocks=2048, block_size=block_size)
    parent, _ = prefilled(bm, [i % 1000 for i in range(prompt_len)])
    prompt_blocks = len(parent.block_table)
    samples = [parent] + [Seq(next(_ids), list(parent.token_ids)) for _ in range(n - 1)]
    for child in samples[1:]:
        bm.fork(parent, child)
    copies = [grow(bm, s, 5000 + i) for i, s in enumerate(samples)]
    full_prompt_blocks = prompt_len // block_size
    used = bm.num_blocks - bm.num_free_blocks
    assert used == full_prompt_blocks + n  # the prompt's full blocks + one partial block each
    assert sum(c is not None for c in copies) == (n - 1 if prompt_len % block_size else 0)
    for step in range(40):
        for i, s in enumerate(samples):
            grow(bm, s, 6000 + i + step)
    generated = [len(s.token_ids) - prompt_len for s in samples]
    own = sum(bm.num_blocks_needed(len(s.token_ids)) - full_prompt_blocks for s in samples)
    assert bm.num_blocks - bm.num_free_blocks == full_prompt_blocks + own
    assert bm.num_blocks - bm.num_free_blocks <= 1.1 * prompt_blocks + sum(generated) / block_size + n
    bm.check_consistency(samples)


# ---- property test --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 12), st.sampled_from([1, 2, 4]))
def test_random_operations_keep_accounting_and_contents_right(data, num_blocks, block_size):
    """Random admit / grow / fork / free / preempt / reset sequences. A simulated cache maps
    each slot to the prefix whose last token's KV it holds; every sequence must always read
    exactly its own prefix, and a write must never land in a block another sequence uses."""
    bm = BlockManager(num_blocks, block_size)
    cache: dict[int, tuple[int, ...]] = {}
    live: list[Seq] = []
    preempted: list[list[int]] = []
    tokens = st.lists(st.integers(0, 2), min_size=1, max_size=12)  # tiny vocabulary: many hits

    def write(s: Seq, start: int):
        for p in range(start, len(s.token_ids)):
            assert bm.ref_count(s.block_table[p // block_size]) == 1, "write into a shared block"
            cache[bm.slot(s, p)] = tuple(s.token_ids[: p + 1])

    def admit(token_ids):
        s = Seq(next(_ids), token_ids)
        free_before = bm.num_free_blocks
        if not bm.can_allocate(s):
            with pytest.raises(RuntimeError):
                bm.allocate(s)
            assert s.block_table == [] and bm.num_free_blocks == free_before
            return
        cached = bm.allocate(s)
        assert cached % block_size == 0 and cached < len(token_ids)
        for p in range(cached):
            assert cache[bm.slot(s, p)] == tuple(token_ids[: p + 1]), "wrong prefix hit"
        write(s, cached)
        bm.cache_computed(s, len(token_ids))
        live.append(s)

    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(["admit", "readmit", "grow", "fork", "free", "preempt", "reset"]))
        if op == "admit":
            admit(data.draw(tokens))
        elif op == "readmit" and preempted:
            admit(preempted.pop())
        elif op in ("grow", "fork", "free", "preempt") and live:
            s = data.draw(st.sampled_from(live))
            if op == "grow":
                s.token_ids.append(data.draw(st.integers(0, 2)))
                if bm.can_append(s):
                    for src, dst in bm.append_slots(s):
                        for offset in range(block_size):
                            if src * block_size + offset in cache:
                                cache[dst * block_size + offset] = cache[src * block_size + offset]
                    write(s, len(s.token_ids) - 1)
                else:  # the scheduler preempts it
                    with pytest.raises(RuntimeError):
                        bm.append_slot(s)
                    live.remove(s)
                    bm.free(s)
                    preempted.append(s.token_ids)
            elif op == "fork":
                child = Seq(next(_ids), list(s.token_ids))
                bm.fork(s, child)
                live.append(child)
            else:
                live.remove(s)
                bm.free(s)
                if op == "preempt":
                    preempted.append(s.token_ids)
        elif op == "reset":
            bm.reset_prefix_cache()
        bm.check_consistency(live)
        for s in live:
            for p in range(len(s.token_ids)):
                assert cache[bm.slot(s, p)] == tuple(s.token_ids[: p + 1]), "a sequence's cache was overwritten"
    for s in live:
        bm.free(s)
    bm.check_consistency([])
    assert bm.num_free_blocks == num_blocks
