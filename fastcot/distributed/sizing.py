"""How big a tensor-parallel rank is: weights, KV bytes per token, and the context and
concurrency the rest of the GPU holds, computed from the sharding rules (`ShardPlan`) and the
engine's own KV-cache budget (`fastcot.engine.capacity`).

`python -m fastcot.distributed.sizing` prints the table of docs/tensor_parallel.md (Llama-3.1
8B, 70B, 405B on 1, 2, 4, 8 GPUs of 80 GiB, bfloat16 and int4 weights, bfloat16 KV cache).

Assumptions: weights as fastcot stores them (int4: quantize-on-load or GPTQ with group size
128, 4-bit values plus a bfloat16 scale and zero point per group and output row; embeddings,
LM head and norms in bfloat16); the engine's defaults (`gpu_memory_utilization=0.9`,
`max_num_seqs=256`, `max_num_batched_tokens=8192`) and its activation estimate; nothing else
on the GPU (the CUDA context and NCCL buffers, a few hundred MiB, are not counted).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from fastcot.distributed.sharding import ShardPlan
from fastcot.engine.capacity import GiB, _activation_bytes
from fastcot.models.config import ModelConfig
from fastcot.models.quant_config import int4_group_size

GPU_BYTES = 80 * GiB
UTILIZATION = 0.9
CONTEXT = 131072  # Llama-3.1's longest context


def llama31(name: str) -> ModelConfig:
    """The published Llama-3.1 configs (config.json of meta-llama/Llama-3.1-{8B,70B,405B})."""
    hidden, intermediate, layers, heads = {"8B": (4096, 14336, 32, 32), "70B": (8192, 28672, 80, 64),
                                           "405B": (16384, 53248, 126, 128)}[name]
    return ModelConfig(architecture="LlamaForCausalLM", hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8, head_dim=128,
                       vocab_size=128256, max_position_embeddings=CONTEXT, rope_theta=500000.0,
                       torch_dtype=torch.bfloat16)


def _linear_bytes(n: int, k: int, int4: bool, group_k: int) -> int:
    """One `[n, k]` linear on a rank; int4 groups are sized from the whole layer's K (`group_k`)."""
    if not int4:
        return 2 * n * k
    gs = int4_group_size(group_k)
    groups = 1 if gs == -1 else k // gs
    return n * k // 2 + 2 * 2 * groups * n  # packed values, bf16 scales and zero points


def rank_weight_bytes(config: ModelConfig, plan: ShardPlan, int4: bool) -> int:
    c, h = plan.rank_config(config), config.hidden_size
    q, kv, inter = c.q_size, c.kv_size, c.intermediate_size
    layer = (_linear_bytes(q + 2 * kv, h, int4, h) + _linear_bytes(h, q, int4, config.q_size)
             + _linear_bytes(2 * inter, h, int4, h) + _linear_bytes(h, inter, int4, config.intermediate_size)
             + 2 * 2 * h)
    vocab = 2 * plan.vocab_per_rank * h * (1 if config.tie_word_embeddings else 2)
    return config.num_hidden_layers * layer + vocab + 2 * h


def sizing(config: ModelConfig, size: int, int4: bool, *, kv_dtype=torch.bfloat16) -> dict:
    plan = ShardPlan.create(config, size, 0)
    rank = plan.rank_config(config)
    weights = rank_weight_bytes(config, plan, int4)
    kv_per_token = rank.kv_cache_bytes_per_block(1, kv_dtype)
    activations = _activation_bytes(dataclasses.replace(rank, torch_dtype=torch.bfloat16), 256, 8192)
    budget = int(UTILIZATION * GPU_BYTES) - weights - activations
    tokens = max(0, budget // kv_per_token)
    return {"gpus": size, "weights": "int4" if int4 else "bf16", "weights_gib": weights / GiB,
            "kv_bytes_per_token": kv_per_token, "kv_budget_gib": budget / GiB, "max_tokens": tokens,
            "fits": budget > 0, "concurrency_128k": tokens / CONTEXT}


def table(models=("8B", "70B", "405B"), sizes=(1, 2, 4, 8)) -> str:
    header = ("| model | weights | GPUs | weights per GPU | KV bytes/token per GPU | KV cache per GPU | "
              "tokens in cache | sequences of 128k |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name in models:
        config = llama31(name)
        for int4 in (False, True):
            for size in sizes:
                r = sizing(config, size, int4)
                if not r["fits"]:
                    cache = tokens = seqs = "does not fit"
                else:
                    cache, tokens = f"{r['kv_budget_gib']:.1f} GiB", f"{r['max_tokens'] / 1e6:.2f} M"
                    seqs = f"{r['concurrency_128k']:.1f}"
                lines.append(f"| {name} | {r['weights']} | {size} | {r['weights_gib']:.1f} GiB | "
                             f"{r['kv_bytes_per_token'] // 1024} KiB | {cache} | {tokens} | {seqs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastcot.distributed.sizing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
