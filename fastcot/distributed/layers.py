"""The communicating layers of a tensor-parallel Llama, and the rank's model.

A rank's model is `LlamaForCausalLM` built from its shard's config (`ShardPlan.rank_config`:
its heads, its MLP width), so the column-parallel projections (`qkv_proj`, `gate_up_proj`)
are plain linears over the rank's output rows and need no communication. What does:

- `RowParallelLinear` (`o_proj`, `down_proj`): the rank's input channels, then a sum over
  ranks (all-reduce); the bias is added once, after the sum.
- `GatheredRowParallelLinear`: the same projections split along N instead, for act-order
  int4 weights, whose groups are scattered over K and cannot be cut along it in fastcot's
  int4 layout: the input is all-gathered, each rank computes its output columns over the
  full K, and the outputs are all-gathered. Exact (each output is one rank's full sum).
- `VocabParallelEmbedding`: each rank holds a slice of the (padded) vocabulary; ids outside
  it give zeros, and the all-reduce leaves each id's row.
- The LM head: each rank computes its vocabulary slice's logits; rank 0 gathers them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastcot.distributed.groups import TPGroup
from fastcot.distributed.sharding import ShardPlan
from fastcot.models.config import ModelConfig
from fastcot.models.llama import LlamaForCausalLM


class RowParallelLinear(nn.Module):
    """`all_reduce(linear(x)) + bias`, `linear` holding this rank's input channels."""

    def __init__(self, linear: nn.Module, bias: torch.Tensor | None, group: TPGroup):
        super().__init__()
        self.linear = linear
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.group.all_reduce(self.linear(x))
        return out if self.bias is None else out + self.bias


class GatheredRowParallelLinear(nn.Module):
    """`all_gather(linear(all_gather(x)))`, `linear` holding this rank's output rows over every
    input channel (bias included)."""

    def __init__(self, linear: nn.Module, group: TPGroup):
        super().__init__()
        self.linear = linear
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(self.linear(self.group.all_gather(x)))


class VocabParallelEmbedding(nn.Module):
    """Rows `[start, start + rows)` of the padded vocabulary's embedding; `forward(ids)` is the
    full embedding of `ids` on every rank."""

    def __init__(self, rows: int, hidden_size: int, start: int, group: TPGroup):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)
        self.start, self.group = start, group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.group.all_reduce(out)

    def extra_repr(self) -> str:
        return f"rows={self.weight.shape[0]}, start={self.start}"


class ParallelLlamaForCausalLM(LlamaForCausalLM):
    """One rank's shard of a Llama-family model. `config` is the rank's (its heads and MLP
    width: the KV cache it allocates holds only its heads); `full_config` the model's.
    `compute_logits` is collective: every rank must call it on the same rows; rank 0 gets
    `[N, vocab]` float32 logits, the others None (on CUDA, the same logits)."""

    def __init__(self, full_config: ModelConfig, plan: ShardPlan, group: TPGroup):
        super().__init__(plan.rank_config(full_config))
        self.full_config, self.plan, self.group = full_config, plan, group
        hidden, rows = full_config.hidden_size, plan.vocab_per_rank
        self.model.embed_tokens = VocabParallelEmbedding(rows, hidden, plan.vocab_start, group)
        if self.lm_head is not None:
            self.lm_head = nn.Linear(hidden, rows, bias=False).requires_grad_(False)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        local = F.linear(hidden, self.lm_head_weight).float()
        logits = self.group.gather_to_first(local)
        return None if logits is None else logits[:, : self.full_config.vocab_size]
