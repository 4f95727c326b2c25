"""How a Llama-family model is split over `size` tensor-parallel ranks (vLLM's rules).

- Attention: query heads split evenly (`num_heads % size == 0`). Key/value heads split evenly
  when `num_kv_heads >= size` (`num_kv_heads % size == 0`); when `size > num_kv_heads`, each
  rank holds one KV head and every KV head is replicated on `size // num_kv_heads` ranks
  (`size % num_kv_heads == 0`). A rank's query heads all read its own KV heads.
- MLP: `intermediate_size % size == 0`.
- Vocabulary: padded so that every rank holds the same number of rows, a multiple of 64.

`ShardPlan.create(config, size, rank)` checks these and raises ValueError naming the numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastcot.models.config import ModelConfig

VOCAB_PAD = 64
COLUMN_PARTS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARTS = ("o_proj", "down_proj")


@dataclass(frozen=True)
class ShardPlan:
    """Which slice of every weight rank `rank` of `size` holds."""

    rank: int
    size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def create(cls, config: ModelConfig, size: int, rank: int = 0) -> ShardPlan:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"tensor_parallel_size must be an int >= 1, got {size!r}")
        if not 0 <= rank < size:
            raise ValueError(f"rank must be in [0, {size}), got {rank}")
        h, kv = config.num_attention_heads, config.num_key_value_heads
        if h % size != 0:
            raise ValueError(f"tensor_parallel_size={size} must divide num_attention_heads={h}")
        if kv >= size and kv % size != 0:
            raise ValueError(f"tensor_parallel_size={size} must divide num_key_value_heads={kv} "
                             f"(or be a multiple of it, to replicate KV heads)")
        if kv < size and size % kv != 0:
            raise ValueError(f"tensor_parallel_size={size} is larger than num_key_value_heads={kv}, so KV heads are "
                             f"replicated, which needs tensor_parallel_size to be a multiple of {kv}")
        if config.intermediate_size % size != 0:
            raise ValueError(f"tensor_parallel_size={size} must divide intermediate_size={config.intermediate_size}")
        if config.hidden_size % size != 0:
            raise ValueError(f"tensor_parallel_size={size} must divide hidden_size={config.hidden_size}")
        return cls(rank=rank, size=size, num_heads=h, num_kv_heads=kv, head_dim=config.head_dim,
                   hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                   vocab_size=config.vocab_size)

    # ---- heads ---------------------------------------------------------------------------------

    @property
    def heads_per_rank(self) -> int:
        return self.num_heads // self.size

    @property
    def kv_heads_per_rank(self) -> int:
        return max(1, self.num_kv_heads // self.size)

    @property
    def kv_replicas(self) -> int:
        """Ranks holding each KV head (1 unless `size > num_kv_heads`)."""
        return max(1, self.size // self.num_kv_heads)

    @property
    def first_kv_head(self) -> int:
        return (self.rank // self.kv_replicas) * self.kv_heads_per_rank

    def rank_config(self, config: ModelConfig) -> ModelConfig:
        """The config of this rank's shard: its heads and MLP width (the KV cache and the
        linears are sized from it); vocabulary and everything else as the model's."""
        return dataclasses.replace(config, num_attention_heads=self.heads_per_rank,
                                   num_key_value_heads=self.kv_heads_per_rank,
                                   intermediate_size=self.intermediate_size // self.size)

    # ---- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab_per_rank(self) -> int:
        per = -(-self.vocab_size // self.size)
        return -(-per // VOCAB_PAD) * VOCAB_PAD

    @property
    def vocab_start(self) -> int:
        return self.rank * self.vocab_per_rank

    # ---- linears -------------------------------------------------------------------------------

    def out_range(self, part: str) -> tuple[int, int]:
        """`[start, stop)` of the output rows (N) a column-parallel part keeps on this rank, or
        the N slice a row-parallel part keeps when it is split along N (act-order int4)."""
        d, r = self.head_dim, self.rank
        if part == "q_proj":
            return r * self.heads_per_rank * d, (r + 1) * self.heads_per_rank * d
        if part in ("k_proj", "v_proj"):
            return self.first_kv_head * d, (self.first_kv_head + self.kv_heads_per_rank) * d
        if part in ("gate_proj", "up_proj"):
            per = self.intermediate_size // self.size
            return r * per, (r + 1) * per
        if part in ROW_PARTS:
            per = self.hidden_size // self.size
            return r * per, (r + 1) * per
        raise ValueError(f"unknown linear part {part!r}")

    def in_range(self, part: str) -> tuple[int, int]:
        """`[start, stop)` of the input channels (K) a row-parallel part keeps on this rank."""
        r = self.rank
        if part == "o_proj":
            per = self.heads_per_rank * self.head_dim
        elif part == "down_proj":
            per = self.intermediate_size // self.size
        else:
            raise ValueError(f"{part!r} is not row-parallel")
        return r * per, (r + 1) * per


def part_kind(prefix: str) -> str:
    """The HF linear name at the end of a prefix (`model.layers.0.self_attn.q_proj` -> `q_proj`)."""
    return prefix.rpartition(".")[2]
