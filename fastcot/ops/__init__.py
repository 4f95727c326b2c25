"""fastcot's public kernel API. Each op validates its inputs, picks a backend, and launches.

Ops are registered with `torch.library` under the `fastcot::` namespace (with fake
implementations), so they work under `torch.compile` and CUDA-graph capture.
"""

from fastcot.ops._backend import BACKENDS, BackendError, backend, resolve
from fastcot.ops.activation import silu_and_mul
from fastcot.ops.cascade_attention import cascade_decode_attention
from fastcot.ops.int4_dequantize import int4_dequantize
from fastcot.ops.int4_matmul import int4_matmul
from fastcot.ops.kv_cache import write_kv_cache
from fastcot.ops.norm import rms_norm
from fastcot.ops.paged_attention import paged_decode_attention, paged_prefill_attention
from fastcot.ops.rotary import rope_inv_freq, rotary_embedding

OPS = (
    "int4_matmul", "int4_dequantize", "write_kv_cache", "paged_decode_attention", "paged_prefill_attention",
    "cascade_decode_attention",
    "rms_norm", "rotary_embedding", "silu_and_mul",
)

__all__ = [
    "BACKENDS", "OPS", "BackendError", "backend", "cascade_decode_attention", "int4_dequantize", "int4_matmul",
    "paged_decode_attention", "paged_prefill_attention", "resolve", "rms_norm", "rope_inv_freq",
    "rotary_embedding", "silu_and_mul", "write_kv_cache",
]
