"""The int4 weight format, its quantizer, importers from GPTQ, AWQ and GGUF checkpoints, and a GPTQ exporter."""

from fastcot.quant.int4 import SUPPORTED_GROUP_SIZES, Int4Weight, quantize_int4

__all__ = ["SUPPORTED_GROUP_SIZES", "Int4Weight", "quantize_int4"]
