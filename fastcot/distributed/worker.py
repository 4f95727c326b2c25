"""Ranks 1..N-1: load the rank's shard, then mirror every step rank 0 announces (run the
model on the same inputs with the rank's own KV cache) until rank 0 says stop.

Spawned ranks report over a pipe to rank 0 ("loaded", or "error" with the traceback) and die
with their parent (Linux `PR_SET_PDEATHSIG`, and a lost connection fails their next
collective), so none outlives the process that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback

import torch

from fastcot.distributed import protocol
from fastcot.distributed.groups import TPGroup
from fastcot.distributed.sharding import ShardPlan


class StepMirror:
    """Runs, on one rank, what rank 0's `TensorParallelModel` announces."""

    def __init__(self, model, group: TPGroup):
        self.model, self.group = model, group
        self.device = group.device
        self.kv_caches: list | None = None
        self.hidden: torch.Tensor | None = None
        self.graphs = None  # decode CUDA graphs, when rank 0 captures its own

    @torch.inference_mode()
    def serve(self) -> None:
        header = torch.zeros(protocol.HEADER_LEN, dtype=torch.int64)
        while True:
            command, *values = self.group.broadcast_header(header).tolist()
            if command == protocol.STOP:
                return
            if command == protocol.ALLOCATE:
                self._allocate(*values[:3])
            elif command == protocol.FORWARD:
                self._forward(*values[:5])
            elif command == protocol.LOGITS:
                self._logits(*values[:3])
            elif command == protocol.COPY_BLOCKS:
                self._copy_blocks(values[0])
            elif command == protocol.CAPTURE:
                self._capture(*values[:2])
            elif command == protocol.GRAPH_STEP:
                self._graph_step(*values[:5])
            else:
                raise RuntimeError(f"unknown tensor-parallel command {command}")

    def _recv(self, length: int, dtype=torch.int64) -> torch.Tensor:
        return self.group.broadcast(torch.empty(length, dtype=dtype, device=self.device))

    def _allocate(self, num_blocks: int, block_size: int, dtype_code: int) -> None:
        self.kv_caches = None  # free the old cache first
        shape = self.model.config.kv_cache_shape(num_blocks, block_size)
        dtype = protocol.KV_DTYPES[dtype_code]
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device))
                          for _ in range(self.model.config.num_hidden_layers)]

    def _forward(self, tokens: int, seqs: int, width: int, prefill: int, max_query_len: int) -> None:
        payload = self._recv(protocol.payload_len(tokens, seqs, width, prefill))
        ids, positions, metadata = protocol.unpack_forward(payload, tokens, seqs, width, prefill, max_query_len)
        self.hidden = self.model(ids, positions, self.kv_caches, metadata)

    def _logits(self, mode: int, first: int, rows: int) -> None:
        if mode == protocol.ALL_ROWS:
            hidden = self.hidden
        elif mode == protocol.ROW_RANGE:
            hidden = self.hidden[first: first + rows]
        else:
            size = self.hidden.shape[1]
            hidden = self._recv(rows * size, self.hidden.dtype).view(rows, size)
        self.model.compute_logits(hidden)

    def _capture(self, max_batch: int, max_blocks_per_seq: int) -> None:
        from fastcot.engine.cuda_graphs import DecodeGraphs

        self.graphs = DecodeGraphs(self.model, self.kv_caches, max_batch=max_batch,
                                   max_blocks_per_seq=max_blocks_per_seq, device=self.device)
        self.graphs.capture()

    def _graph_step(self, tokens: int, seqs: int, width: int, prefill: int, max_query_len: int) -> None:
        payload = self._recv(protocol.payload_len(tokens, seqs, width, prefill))
        ids, positions, metadata = protocol.unpack_forward(payload, tokens, seqs, width, prefill, max_query_len)
        self.graphs.run(ids, positions, metadata.slot_mapping, metadata.seq_lens, metadata.block_tables)

    def _copy_blocks(self, pairs: int) -> None:
        src, dst = self._recv(2 * pairs).view(2, pairs)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]


def rank_device(device_type: str, rank: int, base_index: int = 0) -> torch.device:
    if device_type == "cuda":
        device = torch.device("cuda", base_index + rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def serve_rank(spec: dict, rank: int, world_size: int, init_method: str | None, device: torch.device,
               loaded=None) -> None:
    """Load rank `rank`'s shard, join the group, mirror steps until STOP. `loaded()` is
    called after loading, before joining."""
    from fastcot.distributed.loader import load_rank_model
    from fastcot.models import load_config

    group = TPGroup(rank, world_size, device)
    plan = ShardPlan.create(load_config(spec["model"]), world_size, rank)
    model = load_rank_model(spec["model"], plan, group, dtype=spec["dtype"], device=device,
                            quantization=spec["quantization"])
    if loaded is not None:
        loaded()
    group.connect(init_method)
    try:
        StepMirror(model, group).serve()
    finally:
        group.close()


def worker_main(rank: int, world_size: int, init_method: str, spec: dict, conn) -> None:
    """Entry point of a spawned rank (see `fastcot.distributed.executor`)."""
    if spec.get("die_with_parent", True):
        _die_with_parent()
    try:
        torch.set_num_threads(spec["num_threads"])
        device = rank_device(spec["device_type"], rank, spec["base_index"])
        serve_rank(spec, rank, world_size, init_method, device, loaded=lambda: conn.send(("loaded", "")))
    except BaseException:  # noqa: BLE001 - reported to rank 0, which raises it for the caller
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001, S110 - rank 0 is gone; stderr has the traceback
            pass
        sys.stderr.write(f"fastcot tensor-parallel rank {rank} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # stopped by rank 0: skip the interpreter's slow teardown of torch


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux), so a crashed rank 0 leaves no rank behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)
