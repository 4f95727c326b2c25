"""KV-cache block accounting: reference counts, prefix caching, copy-on-write, LRU eviction.

Pure Python bookkeeping over `num_blocks` physical blocks of `block_size` token slots each
(the first dimension of every layer's `k_cache`/`v_cache`); nothing here touches a tensor.

Prefix caching: a full block is named by a chain hash, BLAKE2b-128 of (hash of the previous
block, the block's token ids), so equal hashes mean equal whole prefixes. A block gets its
hash once its tokens' KV has been written (`cache_computed`, or implicitly at `append_slots`),
never at allocation: a prefill still in progress cannot hand unwritten slots to another request.
Freed blocks that carry a hash stay cached, evictable, least recently freed first, until a new
allocation needs them; blocks without one are reused first.

The sequence protocol is three attributes (`BlockSequence`). The scheduler calls, per step:
`can_allocate` / `allocate` when a prompt (or a preempted sequence) is admitted, then prefills
from the returned number of cached tokens; `cache_computed` after each prefill chunk;
`can_append` / `append_slots` before each decode step, performing the returned block copies;
`fork` for the extra samples of `n > 1`; `free` when a sequence finishes or is preempted.

Every change to a block table is recorded (`pop_table_changes`): the model runner writes
exactly those entries to its device copy of the tables before each step, so no path through
the engine can leave a device row pointing at a block the sequence no longer holds.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Protocol


class BlockSequence(Protocol):
    """What the block manager reads and writes on a sequence.

    Attributes:
        seq_id: unique among live sequences.
        token_ids: prompt + generated tokens, including the newest one whose KV is not yet written.
        block_table: physical block of each `block_size` tokens, in order. Owned by the manager:
            set by `allocate` / `fork`, grown by `append_slots`, emptied by `free`.
    """

    seq_id: Hashable
    token_ids: list[int]
    block_table: list[int]


def chain_hash(previous: bytes, token_ids: Iterable[int]) -> bytes:
    """The name of a full block: it changes with any token of the block or of any earlier block."""
    return hashlib.blake2b(previous + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockManager:
    """Allocates KV-cache blocks to sequences and shares them where contents are equal.

    Example:
        >>> from types import SimpleNamespace
        >>> bm = BlockManager(num_blocks=8, block_size=4)
        >>> a = SimpleNamespace(seq_id=0, token_ids=list(range(10)), block_table=[])
        >>> bm.allocate(a), a.block_table, bm.slot(a, 9)
        (0, [0, 1, 2], 9)
        >>> bm.cache_computed(a, 10)  # after the prefill step
        >>> b = SimpleNamespace(seq_id=1, token_ids=list(range(9)) + [99], block_table=[])
        >>> bm.allocate(b), b.block_table  # the first two blocks are shared
        (8, [0, 1, 3])
    """

    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}  # hash -> block, in use or evictable
        self._free: deque[int] = deque(range(num_blocks))  # free, no hash: reused first
        self._evictable: dict[int, None] = {}  # free, with hash, least recently freed first
        # per live sequence: (number of leading blocks hashed, hash of the last of them)
        self._hashed: dict[Hashable, tuple[int, bytes]] = {}
        # per decode-ready sequence: how many more decode tokens go into its own last block (set
        # by `append_slot`, consumed by `needing_room`, dropped whenever its blocks change)
        self._room: dict[Hashable, int] = {}
        # chain hashes of the last prompt looked up, so that a can_allocate then allocate pair
        # (or a waiting prompt checked every step) hashes it once: (seq_id, token list, length)
        self._memo: tuple[tuple, list[bytes]] | None = None
        # per sequence whose block table changed since the last `pop_table_changes`:
        # (the sequence, the lowest index that changed)
        self._changed: dict[Hashable, tuple[BlockSequence, int]] = {}
        # Prefix-cache statistics, in tokens: looked up by allocations, and found cached.
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0

    # ---- queries ----------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take, cached-but-unreferenced ones included."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def num_blocks_needed(self, num_tokens: int) -> int:
        """Blocks that `num_tokens` tokens occupy; more than `num_blocks` means never schedulable."""
        return -(-num_tokens // self.block_size)

    def slot(self, seq: BlockSequence, position: int) -> int:
        """Cache slot of token `position` of `seq`: `block * block_size + offset`."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def slots(self, seq: BlockSequence, start: int, end: int) -> list[int]:
        """Cache slots of positions `[start, end)` (a prefill chunk's `slot_mapping`)."""
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    # ---- prompts ----------------------------------------------------------------------------

    def can_allocate(self, seq: BlockSequence, *, use_prefix_cache: bool = True) -> bool:
        """Whether `allocate(seq)` would succeed now."""
        return self._free_blocks_to_allocate(seq, use_prefix_cache)[0] <= self.num_free_blocks

    def allocate(self, seq: BlockSequence, *, use_prefix_cache: bool = True) -> int:
        """Give `seq` blocks for all its tokens, reusing cached blocks for its longest cached
        prefix of full blocks (unless `use_prefix_cache` is False: a request that scores its
        prompt needs every position computed). Returns the number of leading tokens already in
        the cache (a multiple of `block_size`, always less than `len(seq.token_ids)` so that at
        least one token is computed and yields logits). All or nothing: raises RuntimeError,
        changing nothing, when `can_allocate` is False."""
        if seq.block_table:
            raise RuntimeError(f"sequence {seq.seq_id!r} already holds blocks {seq.block_table[:4]}...")
        if not seq.token_ids:
            raise ValueError(f"sequence {seq.seq_id!r} has no tokens to allocate")
        needed, hits, hashes = self._free_blocks_to_allocate(seq, use_prefix_cache)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"cannot allocate {needed} blocks for sequence {seq.seq_id!r}: {self.num_free_blocks} free"
            )
        self._memo = None
        for block in hits:
            if self._ref[block] == 0:
                del self._evictable[block]
            self._ref[block] += 1
        num_new = self.num_blocks_needed(len(seq.token_ids)) - len(hits)
        seq.block_table = hits + [self._take_free_block() for _ in range(num_new)]
        self._changed[seq.seq_id] = (seq, 0)
        self._room.pop(seq.seq_id, None)
        self._hashed.pop(seq.seq_id, None)
        if hits:
            self._hashed[seq.seq_id] = (len(hits), hashes[len(hits) - 1])
        if self.enable_prefix_caching and use_prefix_cache:
            self.num_queried_tokens += len(seq.token_ids)
            self.num_hit_tokens += len(hits) * self.block_size
        return len(hits) * self.block_size

    def _free_blocks_to_allocate(self, seq: BlockSequence, use_prefix_cache: bool = True
                                 ) -> tuple[int, list[int], list[bytes]]:
        """(free blocks the allocation consumes, cached blocks it reuses, their hashes)."""
        hits, hashes = self._prefix_hits(seq) if use_prefix_cache else ([], [])
        in_use = sum(self._ref[b] > 0 for b in hits)  # shared without leaving the free pool
        return self.num_blocks_needed(len(seq.token_ids)) - in_use, hits, hashes

    def _prefix_hits(self, seq: BlockSequence) -> tuple[list[int], list[bytes]]:
        if not self.enable_prefix_caching:
            return [], []
        bs, tokens = self.block_size, seq.token_ids
        # The last token is always computed: a prompt made only of cached blocks still needs logits.
        max_hits = (len(tokens) - 1) // bs
        key = (seq.seq_id, id(tokens), len(tokens))
        hashes = self._memo[1] if self._memo is not None and self._memo[0] == key else []
        hits = []
        for i in range(max_hits):
            if i == len(hashes):
                hashes.append(chain_hash(hashes[-1] if hashes else b"", tokens[i * bs : (i + 1) * bs]))
            block = self._cached.get(hashes[i])
            if block is None:
                break
            hits.append(block)
        self._memo = (key, hashes)
        return hits, hashes

    def cache_computed(self, seq: BlockSequence, num_computed_tokens: int) -> None:
        """Make the full blocks among the first `num_computed_tokens` tokens of `seq` (whose KV
        is now written) available to later prefix hits. Cheap when there is nothing new."""
        if not self.enable_prefix_caching:
            return
        bs, tokens = self.block_size, seq.token_ids
        done, last = self._hashed.get(seq.seq_id, (0, b""))
        full = min(num_computed_tokens, len(tokens)) // bs
        for i in range(done, full):
            last = chain_hash(last, tokens[i * bs : (i + 1) * bs])
            block = seq.block_table[i]
            # A block computed twice (same prompt admitted twice before either was cached) keeps
            # the first copy cached; the duplicate simply goes back to the free pool later.
            if self._hash[block] is None and last not in self._cached:
                self._hash[block] = last
                self._cached[last] = block
        if full > done:
            self._hashed[seq.seq_id] = (full, last)

    # ---- decoding ---------------------------------------------------------------------------

    def can_append(self, seq: BlockSequence, num_new_tokens: int = 1) -> bool:
        """Whether `append_slots(seq, num_new_tokens)` would succeed now."""
        if num_new_tokens == 1 and self.writes_in_place(seq):
            return True
        return self._blocks_to_append(seq, num_new_tokens) <= self.num_free_blocks

    def append_slot(self, seq: BlockSequence) -> tuple[int, int] | None:
        """`append_slots` for the one token a decode step adds: None, or the (src, dst) pair of
        a copy-on-write that the engine must perform (all layers) before the step."""
        copies = [] if self.writes_in_place(seq) else self.append_slots(seq, 1)
        table = seq.block_table
        if self._ref[table[-1]] == 1:  # the tokens after this one that fit in its own last block
            self._room[seq.seq_id] = len(table) * self.block_size - len(seq.token_ids)
        return copies[0] if copies else None

    def writes_in_place(self, seq: BlockSequence) -> bool:
        """The newest token falls inside the last block, which only `seq` uses. Nothing becomes
        cacheable then: a block fills up only at the boundary, handled by `append_slots`."""
        table = seq.block_table
        position = len(seq.token_ids) - 1
        return (
            position % self.block_size != 0
            and position // self.block_size == len(table) - 1
            and self._ref[table[-1]] == 1
        )

    def needing_room(self, seqs: Iterable[BlockSequence]) -> list[BlockSequence]:
        """For a decode step of `seqs`: the sequences that need `append_slot` (a new block, a
        copy of a shared one, or nothing known since their blocks last changed). The others'
        tokens go into their own last blocks, and are counted as written. One dict lookup a
        sequence: the block tables (long, cold in the cache) are not read."""
        room, out = self._room, []
        for seq in seqs:
            left = room.get(seq.seq_id, 0)
            if left > 0:
                room[seq.seq_id] = left - 1
            else:
                out.append(seq)
        return out

    def append_slots(self, seq: BlockSequence, num_new_tokens: int = 1) -> list[tuple[int, int]]:
        """Make room for the last `num_new_tokens` tokens of `seq.token_ids`, whose KV the next
        step writes; every earlier token's KV must already be written (it is then cached).

        A new block is taken at each block boundary. A block the new tokens write into that is
        shared with another sequence (after `fork`) is replaced by a private copy: the returned
        `(src, dst)` pairs are the block copies the engine performs before the step. All or
        nothing: raises RuntimeError, changing nothing, when `can_append` is False."""
        needed = self._blocks_to_append(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(
                f"cannot append to sequence {seq.seq_id!r}: needs {needed} blocks, {self.num_free_blocks} free"
            )
        first = len(seq.token_ids) - num_new_tokens
        self._room.pop(seq.seq_id, None)
        self.cache_computed(seq, first)
        table, copies = seq.block_table, []
        changed = len(table)
        for i in range(first // self.block_size, len(table)):
            src = table[i]
            if self._ref[src] > 1:
                dst = self._take_free_block()
                self._ref[src] -= 1
                table[i] = dst
                copies.append((src, dst))
                changed = min(changed, i)
        for _ in range(self.num_blocks_needed(len(seq.token_ids)) - len(table)):
            table.append(self._take_free_block())
        if changed < len(table):
            self._touch(seq, changed)
        return copies

    def _blocks_to_append(self, seq: BlockSequence, num_new_tokens: int) -> int:
        total = len(seq.token_ids)
        first = total - num_new_tokens
        if num_new_tokens < 1 or first < 0 or first > len(seq.block_table) * self.block_size:
            raise ValueError(
                f"sequence {seq.seq_id!r}: cannot append {num_new_tokens} of its {total} tokens "
                f"with {len(seq.block_table)} blocks of {self.block_size} (allocate it first)"
            )
        table = seq.block_table
        shared = sum(self._ref[table[i]] > 1 for i in range(first // self.block_size, len(table)))
        return shared + max(0, self.num_blocks_needed(total) - len(table))

    def fork(self, parent: BlockSequence, child: BlockSequence) -> None:
        """Let `child` share all of `parent`'s blocks (the `n` samples of one prompt); the first
        write into the shared partly filled block copies it (`append_slots`). The caller gives
        `child` its own copy of `parent.token_ids`."""
        if child.block_table:
            raise RuntimeError(f"sequence {child.seq_id!r} already holds blocks")
        for block in parent.block_table:
            self._ref[block] += 1
        child.block_table = list(parent.block_table)
        self._changed[child.seq_id] = (child, 0)
        self._room.pop(parent.seq_id, None)  # its last block is shared now
        self._room.pop(child.seq_id, None)
        self._hashed.pop(child.seq_id, None)
        if parent.seq_id in self._hashed:
            self._hashed[child.seq_id] = self._hashed[parent.seq_id]

    def truncate(self, seq: BlockSequence) -> None:
        """Release the blocks past those `seq.token_ids` needs, after its last tokens were
        taken back (speculative tokens that were rejected). Their slots were never cached:
        `append_slots` hashes only tokens before the ones it makes room for."""
        keep = self.num_blocks_needed(len(seq.token_ids))
        table = seq.block_table
        self._room.pop(seq.seq_id, None)
        hashed = self._hashed.get(seq.seq_id, (0, b""))[0]
        if keep < hashed:
            raise RuntimeError(f"sequence {seq.seq_id!r}: cannot drop cached blocks ({hashed} hashed, keeping {keep})")
        if len(table) > keep:
            self._touch(seq, keep)
        while len(table) > keep:
            block = table.pop()
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free.append(block)

    def free(self, seq: BlockSequence) -> None:
        """Release the blocks of a finished or preempted sequence. Blocks with a hash stay
        cached until reallocated; the sequence's last blocks are evicted first (a shared
        prefix is worth more than a private tail)."""
        for block in reversed(seq.block_table):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                if self._hash[block] is not None:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        seq.block_table = []
        self._changed[seq.seq_id] = (seq, 0)
        self._room.pop(seq.seq_id, None)
        self._hashed.pop(seq.seq_id, None)
        if self._memo is not None and self._memo[0][0] == seq.seq_id:
            self._memo = None

    def pop_table_changes(self) -> dict[Hashable, tuple[BlockSequence, int]]:
        """The block tables changed since the last call: `{seq_id: (sequence, lowest index
        changed)}` (entries from that index on may differ; the table may also be shorter)."""
        changes, self._changed = self._changed, {}
        return changes

    def _touch(self, seq: BlockSequence, index: int) -> None:
        known = self._changed.get(seq.seq_id)
        if known is None or index < known[1]:
            self._changed[seq.seq_id] = (seq, index)

    def reset_prefix_cache(self) -> int:
        """Forget every cached block that no sequence uses (e.g. between benchmark runs).
        Returns how many were forgotten."""
        count = len(self._evictable)
        for block in self._evictable:
            del self._cached[self._hash[block]]
            self._hash[block] = None
            self._free.append(block)
        self._evictable.clear()
        self._memo = None
        return count

    def reset(self) -> None:
        """Every block free and uncached, no sequence known (after a failed engine step; the
        sequences that held blocks are gone). Statistics are kept."""
        self._ref = [0] * self.num_blocks
        self._hash = [None] * self.num_blocks
        self._cached.clear()
        self._free = deque(range(self.num_blocks))
        self._evictable.clear()
        self._hashed.clear()
        self._room.clear()
        self._memo = None
        self._changed.clear()

    def _take_free_block(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block = next(iter(self._evictable))  # least recently freed
            del self._evictable[block]
            del self._cached[self._hash[block]]
            self._hash[block] = None
        self._ref[block] = 1
        return block

    # ---- checking ---------------------------------------------------------------------------

    def check_consistency(self, live: Iterable[BlockSequence]) -> None:
        """Assert the accounting invariants, given every sequence that holds blocks (tests)."""
        refs = [0] * self.num_blocks
        for seq in live:
            for block in seq.block_table:
                refs[block] += 1
        assert refs == self._ref, "reference counts differ from the block tables"
        free = list(self._free) + list(self._evictable)
        assert len(set(free)) == len(free), "a block is free twice"
        assert all(self._ref[b] == 0 for b in free), "a free block is referenced"
        assert self.num_free_blocks + sum(r > 0 for r in refs) == self.num_blocks, "blocks leaked"
        assert all(self._hash[b] is None for b in self._free), "an uncached free block has a hash"
        assert all(self._hash[b] is not None for b in self._evictable), "an evictable block has no hash"
        assert {h: b for b, h in enumerate(self._hash) if h is not None} == self._cached, "hash index is stale"
