"""fastcot: fused Triton and CUDA kernels for long chain-of-thought LLM decoding."""

__version__ = "0.1.0"

from fastcot import ops
from fastcot.engine.llm import LLM, StreamDelta
from fastcot.engine.sampling import SamplingParams
from fastcot.engine.self_consistency import self_consistency
from fastcot.engine.sequence import CompletionOutput, RequestOutput
from fastcot.layers import Int4Linear
from fastcot.ops import backend
from fastcot.quant import Int4Weight, quantize_int4

__all__ = [
    "LLM", "CompletionOutput", "Int4Linear", "Int4Weight", "RequestOutput", "SamplingParams", "StreamDelta", "backend", "ops", "self_consistency",
    "quantize_int4", "__version__",
]
