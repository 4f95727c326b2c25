"""What rank 0 sends the other ranks each step: an int64 header of `HEADER_LEN` numbers over
the gloo CPU group, then (for most commands) one int64 payload tensor over the model group.
No Python object is pickled per step.

| command | header after the command | payload |
|---|---|---|
| `FORWARD` | T tokens, B sequences, W table width, prefill (0/1), max_query_len | ids [T], positions [T], slot_mapping [T], seq_lens [B], cu_seqlens_q [B+1] (prefill only), block_tables [B*W] |
| `LOGITS` | mode (`ALL_ROWS`, `ROW_RANGE`, `HIDDEN_ROWS`), first row, rows | for `HIDDEN_ROWS`, the hidden rows [rows, H] in the model's dtype |
| `COPY_BLOCKS` | pairs P | src [P], dst [P] |
| `ALLOCATE` | num_blocks, block_size, KV dtype code | none |
| `STOP` | | none |
| `CAPTURE` | max batch, max blocks per sequence | none (every rank captures its decode CUDA graphs) |
| `GRAPH_STEP` | as `FORWARD` (a decode step) | as `FORWARD`; every rank replays its graph |
"""

from __future__ import annotations

import torch

from fastcot.layers.attention import AttentionMetadata

HEADER_LEN = 8
FORWARD, LOGITS, COPY_BLOCKS, ALLOCATE, STOP, CAPTURE, GRAPH_STEP = 1, 2, 3, 4, 5, 6, 7
ALL_ROWS, ROW_RANGE, HIDDEN_ROWS = 0, 1, 2
KV_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn)


def header(command: int, *values: int) -> torch.Tensor:
    out = torch.zeros(HEADER_LEN, dtype=torch.int64)
    out[0] = command
    out[1: 1 + len(values)] = torch.tensor(values, dtype=torch.int64)
    return out


def pack_forward(input_ids, positions, metadata: AttentionMetadata) -> tuple[list[int], torch.Tensor]:
    """The header values and the payload of a forward step."""
    tables = metadata.block_tables
    prefill = not metadata.is_decode
    parts = [input_ids, positions, metadata.slot_mapping, metadata.seq_lens]
    if prefill:
        parts.append(metadata.cu_seqlens_q)
    parts.append(tables.reshape(-1))
    payload = torch.cat([p.to(torch.int64) for p in parts])
    values = [input_ids.shape[0], tables.shape[0], tables.shape[1], int(prefill), metadata.max_query_len]
    return values, payload


def payload_len(tokens: int, seqs: int, width: int, prefill: int) -> int:
    return 3 * tokens + seqs + (seqs + 1 if prefill else 0) + seqs * width


def unpack_forward(payload: torch.Tensor, tokens: int, seqs: int, width: int, prefill: int, max_query_len: int):
    """`(input_ids, positions, metadata)` from a forward payload (see `pack_forward`)."""
    sizes = [tokens, tokens, tokens, seqs] + ([seqs + 1] if prefill else []) + [seqs * width]
    parts = list(torch.split(payload, sizes))
    ids, positions, slots, seq_lens = parts[:4]
    cu = parts[4].to(torch.int32) if prefill else None
    metadata = AttentionMetadata(
        slot_mapping=slots.to(torch.int32), block_tables=parts[-1].to(torch.int32).view(seqs, width),
        seq_lens=seq_lens.to(torch.int32), cu_seqlens_q=cu, max_query_len=max_query_len,
    )
    return ids.contiguous(), positions.contiguous(), metadata
