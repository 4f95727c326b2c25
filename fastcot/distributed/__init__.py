"""Tensor parallelism on `torch.distributed`: one model over several devices (NCCL on GPUs,
gloo on CPUs). Rank 0 runs the engine; the other ranks run only the model, mirroring the
steps rank 0 announces. See docs/tensor_parallel.md.

- `sharding`: which slice of each weight a rank holds (`ShardPlan`), and the head-count rules.
- `layers`: row-parallel linears, the vocabulary-parallel embedding and LM head, the rank's model.
- `loader`: a rank reads only its slices of a safetensors checkpoint.
- `protocol`: the per-step header and payload.
- `executor`: rank 0 (`TensorParallelModel`, `load_parallel_model`); `worker`: the other ranks.
"""

from fastcot.distributed.executor import (
    TensorParallelError,
    TensorParallelModel,
    load_parallel_model,
)
from fastcot.distributed.groups import TPGroup
from fastcot.distributed.sharding import ShardPlan

__all__ = ["ShardPlan", "TPGroup", "TensorParallelError", "TensorParallelModel", "load_parallel_model"]
