"""The int4 weight format, its quantizer, and importers from GPTQ and AWQ checkpoints."""

from fastcot.quant.int4 import SUPPORTED_GROUP_SIZES, Int4Weight, quantize_int4

__all__ = ["SUPPORTED_GROUP_SIZES", "Int4Weight", "quantize_int4"]
