"""Per-step attention metadata. `AttentionMetadata` and `SharedPrefixGroups` belong to the
layers that read them (`fastcot.layers.attention`); the engine builds them. Here: finding the
rows of a decode batch that share leading KV blocks (forks, prefix-cache hits)."""

from __future__ import annotations

import torch

from fastcot.layers.attention import AttentionMetadata, SharedPrefixGroups

__all__ = ["AttentionMetadata", "SharedPrefixGroups", "shared_prefix_groups", "shared_prefix_tensors"]

# Rows per group entry: bigger groups are split into near-equal entries of at most this many
# rows (each keeps at least 2), so G <= B // 2 and CUDA-graph buffers have fixed shapes.
GROUP_ROWS = 16


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common start of `a` and `b`, at most `limit` (list slices compare in C)."""
    lo, hi = 0, min(limit, len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # a[:lo] == b[:lo], and the common run is at most hi
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_prefix_groups(tables: list[list[int]], seq_lens: list[int], block_size: int, *,
                         min_shared_tokens: int, max_rows: int = GROUP_ROWS) -> list[tuple[int, list[int], list[int]]]:
    """Groups of rows whose block tables start with the same physical blocks.

    Rows are grouped by their first block; a group's shared length is its common run of
    blocks in tokens, at most the shortest row's length. A group splits where its rows'
    tables diverge (say, two requests with 8 samples each behind one cached system prompt)
    when the parts together save more token reads than the whole: a group of r rows sharing s
    tokens saves (r - 1) x s. Only whole shared blocks count: a fork's partly filled block is
    copied on its first write, so it is each row's own (read by its suffix). Groups of one row,
    or sharing fewer than `min_shared_tokens`, are dropped; groups of more than `max_rows` rows
    are split into near-equal parts.

    Returns `(shared_len, shared_blocks, rows)` per group, rows in batch order.
    """
    by_first: dict[int, list[int]] = {}
    for row, table in enumerate(tables):
        if table:
            by_first.setdefault(table[0], []).append(row)
    groups = []
    for rows in by_first.values():
        for shared, members in _best_groups(rows, tables, seq_lens, block_size):
            if shared < max(1, min_shared_tokens):
                continue
            blocks = tables[members[0]][: -(-shared // block_size)]
            parts = -(-len(members) // max_rows)
            size, extra = divmod(len(members), parts)
            start = 0
            for p in range(parts):
                end = start + size + (p < extra)
                groups.append((shared, blocks, members[start:end]))
                start = end
    return groups


def _best_groups(rows, tables, seq_lens, block_size) -> list[tuple[int, list[int]]]:
    """(shared tokens, rows) groups of `rows` (whose tables agree on their first block) that
    save the most token reads: all of them, or the best groups within each set of rows that
    agree on the block where they first diverge."""
    if len(rows) < 2:
        return []
    first = tables[rows[0]]
    common = len(first)
    for row in rows[1:]:
        common = _common_prefix(first, tables[row], common)
    whole = [(min(common * block_size, min(seq_lens[r] for r in rows)), rows)]
    by_next: dict[int, list[int]] = {}
    for row in rows:
        if len(tables[row]) > common:
            by_next.setdefault(tables[row][common], []).append(row)
    # Each part is a strict subset (common is the longest agreement), so the recursion ends.
    parts = [g for part in by_next.values() for g in _best_groups(part, tables, seq_lens, block_size)]
    saved = lambda groups: sum((len(members) - 1) * shared for shared, members in groups)  # noqa: E731
    return parts if saved(parts) > saved(whole) else whole


def shared_prefix_tensors(groups, batch: int, device, *, num_groups: int | None = None,
                          max_rows: int | None = None, width: int | None = None) -> SharedPrefixGroups:
    """`SharedPrefixGroups` tensors of `shared_prefix_groups`' result for a batch of `batch`
    rows, padded to `num_groups` x `max_rows` and `width` shared blocks when given."""
    num_groups = len(groups) if num_groups is None else num_groups
    max_rows = max((len(rows) for _, _, rows in groups), default=1) if max_rows is None else max_rows
    width = max((len(blocks) for _, blocks, _ in groups), default=1) if width is None else width
    group_rows = torch.full((num_groups, max_rows), -1, dtype=torch.int32)
    shared_lens = torch.zeros(num_groups, dtype=torch.int32)
    tables = torch.zeros((num_groups, max(1, width)), dtype=torch.int32)
    row_groups = torch.full((batch,), -1, dtype=torch.int32)
    for g, (shared, blocks, rows) in enumerate(groups):
        group_rows[g, : len(rows)] = torch.tensor(rows, dtype=torch.int32)
        shared_lens[g] = shared
        tables[g, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        row_groups[rows] = g
    return SharedPrefixGroups(group_rows=group_rows.to(device), shared_lens=shared_lens.to(device),
                              shared_block_tables=tables.to(device), row_groups=row_groups.to(device))
