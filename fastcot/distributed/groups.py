"""`TPGroup`: one rank's view of a tensor-parallel group, passed explicitly to the layers that
communicate (no module reads global process-group state).

Two process groups: `group` carries the model's collectives (NCCL on CUDA, gloo on the CPU)
and has the step timeout; `cpu_group` (gloo) carries the small per-step header and waits as
long as rank 0 stays idle. A dead peer closes its sockets, so gloo collectives fail at once;
the timeout only bounds a peer that is alive but stuck.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

STEP_TIMEOUT_ENV = "FASTCOT_TP_TIMEOUT"
DEFAULT_STEP_TIMEOUT_S = 600.0
IDLE_TIMEOUT = datetime.timedelta(days=30)


def step_timeout() -> datetime.timedelta:
    value = os.environ.get(STEP_TIMEOUT_ENV, str(DEFAULT_STEP_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{STEP_TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{STEP_TIMEOUT_ENV} must be positive, got {value!r}")
    return datetime.timedelta(seconds=seconds)


class TPGroup:
    """Rank `rank` of `world_size` on `device`. Collectives are no-ops for a group of one."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.group = None
        self.cpu_group = None
        self.owns_default_group = False

    def connect(self, init_method: str | None) -> None:
        """Join the group (blocks until every rank has joined). `init_method` None: the default
        process group already exists (torchrun) or is made from the environment."""
        if self.world_size == 1:
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method=init_method or "env://", rank=self.rank,
                                    world_size=self.world_size, timeout=step_timeout())
            self.owns_default_group = True
        elif dist.get_world_size() != self.world_size:
            raise ValueError(f"tensor_parallel_size={self.world_size} but the process group has "
                             f"{dist.get_world_size()} ranks")
        ranks = list(range(self.world_size))
        self.group = dist.new_group(ranks, backend=backend, timeout=step_timeout())
        self.cpu_group = dist.new_group(ranks, backend="gloo", timeout=IDLE_TIMEOUT)

    def close(self) -> None:
        if self.owns_default_group and dist.is_initialized():
            dist.destroy_process_group()
        self.group = self.cpu_group = None
        self.owns_default_group = False

    # ---- collectives -------------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.world_size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` concatenated along the last dim, in rank order."""
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def gather_to_first(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Every rank's `tensor` concatenated along the last dim on rank 0; None elsewhere on
        the CPU. On CUDA every rank gets it: an all-gather, a collective CUDA graphs capture."""
        if self.world_size == 1:
            return tensor
        if self.device.type == "cuda":
            return self.all_gather(tensor)
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(tensor, parts, dst=0, group=self.group)
        return torch.cat(parts, dim=-1) if self.rank == 0 else None

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank (in place), over the model group."""
        if self.world_size > 1:
            dist.broadcast(tensor, src=0, group=self.group)
        return tensor

    def broadcast_header(self, header: torch.Tensor) -> torch.Tensor:
        """Rank 0's int64 CPU `header` on every rank (in place), over the gloo group."""
        if self.world_size > 1:
            dist.broadcast(header, src=0, group=self.cpu_group)
        return header

    def __repr__(self) -> str:
        return f"TPGroup(rank={self.rank}, world_size={self.world_size}, device={self.device})"
