"""fastcot: fused Triton and CUDA kernels for long chain-of-thought LLM decoding."""

__version__ = "0.1.0"

from fastcot import ops
from fastcot.engine.capacity import configure_default_logging
from fastcot.engine.llm import LLM, StreamDelta
from fastcot.engine.llm_engine import EngineStats, LLMEngine
from fastcot.engine.sampling import SamplingParams
from fastcot.engine.self_consistency import self_consistency
from fastcot.engine.sequence import CompletionOutput, Logprob, RequestOutput
from fastcot.layers import Int4Linear
from fastcot.ops import backend
from fastcot.quant import Int4Weight, quantize_int4

configure_default_logging()

__all__ = [
    "LLM", "CompletionOutput", "EngineStats", "Int4Linear", "Int4Weight", "LLMEngine", "Logprob", "RequestOutput",
    "SamplingParams", "StreamDelta", "backend", "ops", "self_consistency", "quantize_int4", "__version__",
]
