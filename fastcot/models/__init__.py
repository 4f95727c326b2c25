"""Llama-family model definitions and Hugging Face checkpoint loading.

    model = load_model("path/to/checkpoint" or "tiny-random", dtype="auto", device="cuda", quantization=None)
    tokenizer = load_tokenizer(same_name_or_path)
    config = model.config  # ModelConfig: shapes, eos_token_ids, kv_cache_shape(...)
"""

from fastcot.models.config import ARCHITECTURES, ModelConfig
from fastcot.models.llama import LlamaForCausalLM
from fastcot.models.loader import load_config, load_model, load_tokenizer, resolve_device, resolve_dtype
from fastcot.models.presets import PRESETS

__all__ = [
    "ARCHITECTURES", "PRESETS", "LlamaForCausalLM", "ModelConfig", "load_config", "load_model", "load_tokenizer",
    "resolve_device", "resolve_dtype",
]
