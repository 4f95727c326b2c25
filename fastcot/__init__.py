"""fastcot: fused Triton and CUDA kernels for long chain-of-thought LLM decoding."""

__version__ = "0.1.0"

from fastcot import ops
from fastcot.layers import Int4Linear
from fastcot.ops import backend
from fastcot.quant import Int4Weight, quantize_int4

__all__ = ["Int4Linear", "Int4Weight", "backend", "ops", "quantize_int4", "__version__"]
