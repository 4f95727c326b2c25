"""Rank 0: start the other ranks, drive them each step, notice when one dies, stop them all.

`load_parallel_model(model, tensor_parallel_size, ...)` returns a `TensorParallelModel`, which
the engine uses like any model: calling it runs one step on every rank (rank 0 first
announces the step's inputs, see `fastcot.distributed.protocol`), `compute_logits` gathers
the logits to rank 0, `copy_blocks` copies KV blocks on every rank, `shutdown()` stops the
ranks (also at interpreter exit).

Two launches:
- spawned (default): ranks 1..N-1 are `torch.multiprocessing` "spawn" children of the
  caller's process; a script using it needs the `if __name__ == "__main__":` guard.
- torchrun: every rank is started by `torchrun --nproc-per-node N script.py` (the
  environment holds RANK and WORLD_SIZE = N). Rank 0 runs the script; on any other rank the
  same `LLM(...)` call serves rank 0 and then ends the process (`SystemExit(0)`).

A rank that dies (killed, out of memory, an exception) makes the next or current step raise
`TensorParallelError` naming the rank and why, within seconds; the remaining ranks are then
stopped and every later step raises the same error. `FASTCOT_TP_TIMEOUT` (seconds, default
600) bounds a collective whose peer is alive but stuck.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import weakref
from multiprocessing.connection import wait

import torch
from torch import nn

from fastcot.distributed import protocol
from fastcot.distributed.groups import TPGroup
from fastcot.distributed.loader import check_checkpoint_kind, check_int4_split
from fastcot.distributed.sharding import ShardPlan

logger = logging.getLogger("fastcot")
START_TIMEOUT_S = 3600.0  # loading a shard of a large checkpoint can take long
JOIN_TIMEOUT_S = 10.0


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or failed; the model cannot run any more."""


def torchrun_rank(tensor_parallel_size: int) -> int | None:
    """This process's rank when torchrun started it for `tensor_parallel_size` ranks, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world == 1:
        return None
    if world != tensor_parallel_size:
        raise ValueError(f"tensor_parallel_size={tensor_parallel_size} but torchrun started WORLD_SIZE={world} "
                         "ranks; they must be equal")
    return int(os.environ["RANK"])


def load_parallel_model(model, tensor_parallel_size: int, *, dtype="auto", device=None, quantization=None):
    """Rank 0's `TensorParallelModel` over `tensor_parallel_size` ranks (see the module docstring)."""
    from fastcot.models import load_config, resolve_device

    check_checkpoint_kind(model)
    device = resolve_device(device)
    config = load_config(model)
    plan = ShardPlan.create(config, tensor_parallel_size, 0)  # head counts checked before anything starts
    check_int4_split(config, plan, quantization)
    if device.type == "cuda" and device.index + tensor_parallel_size > torch.cuda.device_count():
        raise ValueError(f"tensor_parallel_size={tensor_parallel_size} needs GPUs {device.index}.."
                         f"{device.index + tensor_parallel_size - 1}, but {torch.cuda.device_count()} are visible")
    spec = {
        "model": str(model), "dtype": dtype, "quantization": quantization, "device_type": device.type,
        "base_index": device.index or 0,
        "num_threads": max(1, torch.get_num_threads() // tensor_parallel_size) if device.type == "cpu" else 1,
        # PR_SET_PDEATHSIG fires when the spawning *thread* ends: only tie ranks to the main thread.
        "die_with_parent": threading.current_thread() is threading.main_thread(),
    }
    rank = torchrun_rank(tensor_parallel_size)
    if rank is not None and rank > 0:
        from fastcot.distributed.worker import rank_device, serve_rank

        local = int(os.environ.get("LOCAL_RANK", rank))
        serve_rank(spec, rank, tensor_parallel_size, None, rank_device(device.type, local, 0))
        raise SystemExit(0)
    return TensorParallelModel(spec, plan, device, torchrun=rank is not None)


class TensorParallelModel(nn.Module):
    """Rank 0's shard, and the link to the other ranks. `config` is rank 0's shard config
    (its KV heads: the engine's KV cache holds only those); `full_config` the model's."""

    def __init__(self, spec: dict, plan: ShardPlan, device: torch.device, *, torchrun: bool):
        super().__init__()
        from fastcot.distributed.loader import load_rank_model

        self.world_size = plan.size
        self.group = TPGroup(0, plan.size, device)
        self.procs, self.conns = [], []
        self._failure: str | None = None
        self._closed = False
        self._kv_caches = None
        self._hidden: torch.Tensor | None = None
        try:
            init_method = None
            if not torchrun:
                init_method = f"tcp://127.0.0.1:{_free_port()}"
                self._spawn(spec, init_method)
            self.local = load_rank_model(spec["model"], plan, self.group, dtype=spec["dtype"], device=device,
                                         quantization=spec["quantization"])
            self._wait_loaded()
            self.group.connect(init_method)
        except BaseException:
            self.shutdown()
            raise
        self.config = self.local.config
        self.full_config = self.local.full_config
        if self.procs:
            threading.Thread(target=self._monitor, name="fastcot-tp-monitor", daemon=True).start()
        atexit.register(_shutdown_ref, weakref.ref(self))

    # ---- the model interface the engine uses ----------------------------------------------------

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.local.lm_head_weight

    def ensure_allocated(self, kv_caches) -> None:
        """Have the other ranks allocate caches like rank 0's `kv_caches` (once per cache)."""
        if kv_caches is not self._kv_caches:
            k_cache = kv_caches[0][0]
            self._announce(protocol.ALLOCATE, k_cache.shape[0], k_cache.shape[1],
                           protocol.KV_DTYPES.index(k_cache.dtype))
            self._kv_caches = kv_caches

    def decode_graphs(self, kv_caches, *, max_batch: int, max_blocks_per_seq: int, device):
        """The engine's decode CUDA graphs, captured and replayed on every rank together."""
        from fastcot.distributed.graphs import ParallelDecodeGraphs

        return ParallelDecodeGraphs(self, kv_caches, max_batch=max_batch, max_blocks_per_seq=max_blocks_per_seq,
                                    device=device)

    def forward(self, input_ids, positions, kv_caches, metadata) -> torch.Tensor:
        def step():
            self.ensure_allocated(kv_caches)
            values, payload = protocol.pack_forward(input_ids, positions, metadata)
            self._announce(protocol.FORWARD, *values, payload=payload)
            self._hidden = self.local(input_ids, positions, kv_caches, metadata)
            return self._hidden

        return self._guarded(step)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        def step():
            mode, first = self._rows_of_last_hidden(hidden)
            payload = hidden.contiguous().view(-1) if mode == protocol.HIDDEN_ROWS else None
            self._announce(protocol.LOGITS, mode, first, hidden.shape[0], payload=payload)
            return self.local.compute_logits(hidden)

        return self._guarded(step)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy KV blocks `src -> dst` on the other ranks (the caller copies rank 0's)."""
        if pairs:
            payload = torch.tensor([s for s, _ in pairs] + [d for _, d in pairs], dtype=torch.int64,
                                   device=self.group.device)
            self._guarded(lambda: self._announce(protocol.COPY_BLOCKS, len(pairs), payload=payload))

    def _rows_of_last_hidden(self, hidden: torch.Tensor) -> tuple[int, int]:
        """The other ranks hold the last step's hidden states: name rows of it when `hidden`
        is a view of them, else send `hidden` itself."""
        last = self._hidden
        if last is not None and hidden.dim() == 2 and hidden.dtype == last.dtype \
                and hidden.untyped_storage().data_ptr() == last.untyped_storage().data_ptr() \
                and hidden.stride() == last.stride() and last.is_contiguous():
            row_bytes = last.stride(0) * last.element_size()
            offset = hidden.data_ptr() - last.data_ptr()
            first, rest = divmod(offset, row_bytes)
            if rest == 0 and 0 <= first and first + hidden.shape[0] <= last.shape[0]:
                if first == 0 and hidden.shape[0] == last.shape[0]:
                    return protocol.ALL_ROWS, 0
                return protocol.ROW_RANGE, first
        return protocol.HIDDEN_ROWS, 0

    # ---- announcing steps, failures -----------------------------------------------------------

    def _announce(self, command: int, *values: int, payload: torch.Tensor | None = None) -> None:
        self.group.broadcast_header(protocol.header(command, *values))
        if payload is not None:
            self.group.broadcast(payload)

    def _guarded(self, step):
        """Run one announced step. A Ctrl-C in the middle of it is held until the step ends
        (the other ranks are inside it too); a second one breaks the step off, and the model."""
        if self._closed:
            raise TensorParallelError(self._failure or "the tensor-parallel model was shut down")
        if self._failure is not None:
            raise TensorParallelError(self._failure)
        held = _held_interrupt()
        try:
            with held:
                return step()
        except KeyboardInterrupt:
            if not held.step_done:
                self._fail("interrupted in the middle of a step, so the ranks are out of step")
            raise
        except Exception as err:
            failure = self._find_failure(wait_s=5.0)
            if failure is None:
                failure = f"a tensor-parallel collective failed ({type(err).__name__}: {err})"
            self._fail(failure)
            raise TensorParallelError(self._failure) from err

    def _find_failure(self, wait_s: float) -> str | None:
        """Why a rank died or failed, waiting up to `wait_s` for one to end."""
        if self._failure is not None:
            return self._failure
        alive = [p for p in self.procs if p.exitcode is None]
        ended = set(wait([p.sentinel for p in alive], timeout=wait_s)) if alive else set()
        for proc in alive:
            if proc.sentinel in ended:
                proc.join(JOIN_TIMEOUT_S)  # its pipe closes a moment before it can be reaped
        for rank, (proc, conn) in enumerate(zip(self.procs, self.conns), start=1):
            if proc.exitcode is not None:
                return _describe_exit(rank, proc, _error_text(conn))
        return None

    def _fail(self, failure: str) -> None:
        if self._failure is None:
            self._failure = failure
            logger.error("tensor parallelism stopped: %s", failure)
        self._stop_workers(graceful=False)

    def _monitor(self) -> None:
        """Notice a rank's death while rank 0 is idle, so the next step fails at once."""
        sentinels = {p.sentinel: p for p in self.procs}
        while not self._closed and sentinels:
            for ready in wait(list(sentinels), timeout=1.0):
                sentinels.pop(ready)
                failure = None if self._closed else self._find_failure(wait_s=0.0)
                if failure is not None and self._failure is None:
                    self._failure = failure
                    logger.error("tensor parallelism stopped: %s", failure)

    # ---- starting and stopping ----------------------------------------------------------------

    def _spawn(self, spec: dict, init_method: str) -> None:
        from fastcot.distributed.worker import worker_main

        ctx = torch.multiprocessing.get_context("spawn")
        for rank in range(1, self.world_size):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=worker_main, args=(rank, self.world_size, init_method, spec, child),
                               name=f"fastcot-tp-rank{rank}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def _wait_loaded(self) -> None:
        waiting = dict(zip(self.conns, range(1, self.world_size)))
        while waiting:
            ready = wait(list(waiting) + [p.sentinel for p in self.procs], timeout=START_TIMEOUT_S)
            if not ready:
                raise TensorParallelError(f"tensor-parallel ranks {sorted(waiting.values())} did not load their "
                                          f"shards within {START_TIMEOUT_S:.0f} s")
            for conn in [r for r in ready if r in waiting]:
                try:
                    kind, text = conn.recv()
                except EOFError:
                    kind, text = "error", ""
                rank = waiting.pop(conn)
                if kind != "loaded":
                    self.procs[rank - 1].join(JOIN_TIMEOUT_S)
                    raise TensorParallelError(_describe_exit(rank, self.procs[rank - 1], text))
            for rank, proc in enumerate(self.procs, start=1):
                if proc.exitcode is not None and rank in waiting.values():
                    raise TensorParallelError(_describe_exit(rank, proc, _error_text(self.conns[rank - 1])))

    def shutdown(self) -> None:
        """Stop every other rank and leave the process group. Idempotent; later steps raise."""
        if self._closed:
            return
        self._closed = True
        stopping = False
        if self._failure is None and self.group.cpu_group is not None:
            try:
                self.group.broadcast_header(protocol.header(protocol.STOP))
                stopping = True
            except Exception:  # noqa: BLE001, S110 - a rank already gone: it is killed below
                pass
        self._stop_workers(graceful=stopping)  # ranks still loading (a failed start) are killed at once
        try:
            self.group.close()
        except Exception:  # noqa: BLE001, S110 - a broken group cannot be torn down cleanly; the ranks are gone
            pass

    def _stop_workers(self, graceful: bool) -> None:
        for proc in self.procs:
            if graceful:
                proc.join(JOIN_TIMEOUT_S)
            if proc.exitcode is None:
                proc.kill()
            proc.join(JOIN_TIMEOUT_S)
        for conn in self.conns:
            conn.close()
        self.conns = []


class _held_interrupt:
    """Hold SIGINT on the main thread until the block ends, then raise KeyboardInterrupt; a
    second SIGINT raises at once. Other threads (and other handlers) are left alone."""

    def __enter__(self):
        self.previous, self.step_done = None, False
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.received = False
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
            raise KeyboardInterrupt
        self.received = True

    def __exit__(self, *exc):
        self.step_done = exc[0] is None
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            if self.received and exc[0] is None:
                raise KeyboardInterrupt
        return False


def _shutdown_ref(ref) -> None:
    model = ref()
    if model is not None:
        model.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_text(conn) -> str:
    try:
        if conn.poll():
            kind, text = conn.recv()
            return text if kind == "error" else ""
    except (EOFError, OSError):
        pass
    return ""


def _describe_exit(rank: int, proc, text: str) -> str:
    code = proc.exitcode
    if code is None:
        how = "failed"
    elif code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}"
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return (f"tensor-parallel rank {rank} (pid {proc.pid}) {how}" + (f": {last}" if last else "")
            + "; this model cannot run any more: shut it down and create a new one")
