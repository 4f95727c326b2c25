"""`ModelConfig`: the shape and numerics of a Llama-family model, read from a Hugging Face `config.json`."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path

import torch

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
# model_type fallback for configs saved without `architectures` (e.g. a bare `Config.save_pretrained`).
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
ROPE_TYPES = ("linear", "llama3")  # beside the default; what `fastcot.ops.rotary_embedding` computes
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ModelConfig:
    """What fastcot needs to build and run a Llama/Qwen2/Mistral decoder.

    Build it with :meth:`from_hf_config` (a `config.json` dict) or :func:`load_config` (a
    directory, also reading `generation_config.json`); presets construct it directly.

    `rope_scaling` is None or a dict with `rope_type` "linear" or "llama3" and that type's
    parameters, in the form `fastcot.ops.rotary_embedding` takes. `sliding_window` is recorded,
    not applied: the paged attention attends to the whole context, which equals windowed
    attention only while a sequence is within the window, so an engine must cap its
    `max_model_len` at it.
    """

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    torch_dtype: torch.dtype = torch.float32
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    sliding_window: int | None = None
    quantization_config: dict | None = None
    hf_config: dict = field(default_factory=dict, repr=False)
    generation_config: dict = field(default_factory=dict, repr=False)  # generation_config.json, if any

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        from fastcot.ops import rope_inv_freq

        try:  # the rotary op's own validation of head_dim, rope_theta and rope_scaling
            rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config: {err}") from err

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def kv_cache_shape(self, num_blocks: int, block_size: int) -> tuple[int, int, int, int]:
        """Shape of one layer's `k_cache` (and `v_cache`): `[num_blocks, block_size, Hkv, D]`."""
        return (num_blocks, block_size, self.num_key_value_heads, self.head_dim)

    def kv_cache_bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        """Bytes one block takes over all layers, keys and values."""
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_hidden_layers * block_size * self.kv_size * element

    @classmethod
    def from_hf_config(cls, hf: dict) -> "ModelConfig":
        """Read a `config.json` dict (transformers 4 or 5 layout). Raises ValueError naming an
        unsupported architecture, a missing field or an unsupported value."""
        if not isinstance(hf, dict):
            raise TypeError(f"config must be a dict, got {type(hf).__name__}")
        arch = _architecture(hf)
        get = _Getter(hf)
        hidden = get.int("hidden_size")
        heads = get.int("num_attention_heads")
        kv_heads = get.int("num_key_value_heads", default=heads)
        head_dim = hf.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ValueError(f"config: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})")
            head_dim = hidden // heads
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config: hidden_act must be 'silu', got {act!r}")
        rope_theta, rope_scaling = _rope(hf)
        if arch == "Qwen2ForCausalLM":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            attention_bias = bool(hf.get("attention_bias", False))
            qkv_bias = o_bias = attention_bias  # HF Llama: one flag for q, k, v and o
            mlp_bias = bool(hf.get("mlp_bias", False))
        sliding_window = hf.get("sliding_window")
        if arch == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
            sliding_window = None
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=get.int("intermediate_size"),
            num_hidden_layers=get.int("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=_positive_int("head_dim", head_dim),
            vocab_size=get.int("vocab_size"),
            max_position_embeddings=get.int("max_position_embeddings"),
            rms_norm_eps=get.number("rms_norm_eps"),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_proj_bias=o_bias,
            mlp_bias=mlp_bias,
            torch_dtype=_dtype(hf.get("dtype", hf.get("torch_dtype"))),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=_token_ids("eos_token_id", hf.get("eos_token_id")),
            sliding_window=sliding_window,
            quantization_config=hf.get("quantization_config"),
            hf_config=dict(hf),
        )


def load_config(path) -> ModelConfig:
    """`ModelConfig` of a checkpoint directory: `config.json`, with the eos ids of
    `generation_config.json` (when present) taking precedence, as transformers' generate does.
    The generation config itself is kept in `generation_config` (see `sampling_defaults`).

    Errors name the file: FileNotFoundError without config.json, ValueError for JSON that does
    not parse or a config fastcot cannot run (an unsupported architecture names the supported)."""
    from fastcot.models.checkpoint import config_file, read_json

    file = config_file(Path(path))
    try:
        config = ModelConfig.from_hf_config(read_json(file))
    except ValueError as err:
        if str(err).startswith(str(file)):
            raise
        raise ValueError(f"{file}: {str(err).removeprefix('config: ')}") from err
    generation_file = file.parent / "generation_config.json"
    if generation_file.is_file():
        generation = read_json(generation_file)
        try:
            eos = _token_ids("eos_token_id", generation.get("eos_token_id"))
        except ValueError as err:
            raise ValueError(f"{generation_file}: {str(err).removeprefix('config: ')}") from err
        if eos:
            config.eos_token_ids = eos
        if generation.get("bos_token_id") is not None:
            config.bos_token_id = generation["bos_token_id"]
        config.generation_config = generation
    return config


# generation_config.json field -> SamplingParams field (the ones vLLM's generation_config="auto" reads).
GENERATION_SAMPLING_FIELDS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens",
}


def sampling_defaults(config: ModelConfig) -> dict:
    """The sampling settings the checkpoint's `generation_config.json` recommends, under
    `SamplingParams`' names (temperature, top_p, top_k, min_p, repetition_penalty, max_tokens
    from max_new_tokens); fields it leaves out or sets to null are absent. As in vLLM,
    `do_sample` is not read: a file that gives a temperature asks for it."""
    generation = config.generation_config
    return {ours: generation[theirs] for theirs, ours in GENERATION_SAMPLING_FIELDS.items()
            if generation.get(theirs) is not None}


def _architecture(hf: dict) -> str:
    archs = hf.get("architectures")
    if archs:
        supported = [a for a in archs if a in ARCHITECTURES]
        if not supported:
            raise ValueError(f"config: architectures {archs} not supported; fastcot runs {', '.join(ARCHITECTURES)} "
                             "(Llama-family decoders)")
        return supported[0]
    model_type = hf.get("model_type")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise ValueError(
        f"config: no supported architectures (got architectures={archs!r}, model_type={model_type!r}); "
        f"fastcot runs {', '.join(ARCHITECTURES)} (model_type {', '.join(_MODEL_TYPES)})"
    )


class _Getter:
    """Required fields of the config with their types checked; errors name the field."""

    def __init__(self, hf: dict):
        self.hf = hf

    def _get(self, name, default):
        value = self.hf.get(name, default)
        if value is None:
            raise ValueError(f"config: missing field {name!r}")
        return value

    def int(self, name, default=None) -> int:
        return _positive_int(name, self._get(name, default))

    def number(self, name, default=None) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"config: {name} must be a positive number, got {value!r}")
        return float(value)


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config: {name} must be a positive integer, got {value!r}")
    return value


def _rope(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from transformers 5's `rope_parameters` or 4's `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type form
        params = params["full_attention"]
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        field_name = "rope_scaling"
    else:
        params = dict(params)
        field_name = "rope_parameters"
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 0:
        raise ValueError(f"config: rope_theta must be a positive number, got {theta!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"config: {field_name} rope_type {rope_type!r} not supported; fastcot runs default, {', '.join(ROPE_TYPES)}"
        )
    params["rope_type"] = rope_type
    params.pop("type", None)
    return float(theta), params


def _dtype(value) -> torch.dtype:
    if value is None:
        return torch.float32
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"config: dtype must be one of {list(_DTYPES)}, got {value!r}")
    return _DTYPES[name]


def _token_ids(name, value) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"config: {name} must be a token id or a list of them, got {value!r}")
    return tuple(values)
