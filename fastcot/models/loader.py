"""Load a Llama-family model from a local Hugging Face directory (or a built-in preset).

Checkpoints: `config.json`, one or several `*.safetensors` (sharded ones listed in
`model.safetensors.index.json`), optionally `generation_config.json` and tokenizer files.
Whatever can be checked before reading weights is (`check_checkpoint` runs all of it), and each
error names the file and the fix: a Hub id, a missing or truncated shard, pickle weights,
corrupt JSON, a missing package (see `fastcot.models.checkpoint`).
Loading streams tensor by tensor: every tensor header is checked first (missing, unexpected or
mis-shaped tensors raise ValueError naming the tensor before anything is read), then tensors
are read one at a time and moved to the device, so peak memory is the final model plus one
fused projection. Hugging Face names map onto the fused parameters: `q_proj`, `k_proj`,
`v_proj` -> `qkv_proj` rows in that order, `gate_proj`, `up_proj` -> `gate_up_proj`.

int4:
- `quantization="int4"`: every decoder linear is quantized with `fastcot.quantize_int4` as
  it arrives (round to nearest, group size 128, else the largest of 64, 32 that divides K,
  else one group per row). Embeddings, norms and `lm_head` stay in `dtype`.
- A `quantization_config` in config.json with `quant_method` "gptq" (formats "gptq" and
  "gptq_v2", act-order `g_idx` included) or "awq" (GEMM) loads through
  `Int4Weight.from_gptq` / `from_awq`. The parts of a fused projection are concatenated
  along N into one weight when they share a group size, scale dtype and zero-point form and
  (act-order) the same column permutation, which GPTQ produces for parts reading one input.
  Otherwise, and for a part stored in float (`modules_to_not_convert`), the projection is a
  `ConcatLinear` of one linear per part: correct, one launch per part. GPTQ's stored biases
  are kept even when the config declares none.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastcot.layers import Int4Linear
from fastcot.models.checkpoint import (
    check_tokenizer_files,
    checkpoint_dir,
    read_headers,
    require,
    safetensors_files,
)
from fastcot.models.config import ModelConfig
from fastcot.models.config import load_config as _load_dir_config
from fastcot.models.llama import ConcatLinear, LlamaForCausalLM
from fastcot.models.quant_config import QuantScheme, int4_group_size, quant_scheme
from fastcot.quant import Int4Weight, quantize_int4
from fastcot.quant.int4 import stack_rows

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_QUANT_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
_DTYPE_NAMES = {
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
}


def load_config(name_or_path) -> ModelConfig:
    """The `ModelConfig` of a checkpoint directory or preset name, without loading weights."""
    from fastcot.models import presets

    if presets.is_preset(name_or_path):
        return presets.preset_config(name_or_path)
    from fastcot.models import gguf

    if (gguf_file := gguf.find_gguf(name_or_path)) is not None:
        return gguf.load_gguf_config(gguf_file)
    return _load_dir_config(checkpoint_dir(name_or_path))


def check_checkpoint(name_or_path, *, tokenizer: bool = True) -> ModelConfig:
    """Every check that can fail before weights are read, in the order loading meets them:
    the directory, config.json and generation_config.json, the safetensors shards (all present,
    headers readable), the tokenizer files (`tokenizer=True`), and the packages loading needs.
    Returns the `ModelConfig`. Errors name the file and the fix (see `fastcot.models.checkpoint`)."""
    from fastcot.models import presets

    if presets.is_preset(name_or_path):
        if tokenizer:
            require("transformers", f"the tokenizer of preset {name_or_path!r}")
        return presets.preset_config(name_or_path)
    from fastcot.models import gguf

    if (gguf_file := gguf.find_gguf(name_or_path)) is not None:
        return gguf.load_gguf_config(gguf_file)
    path = checkpoint_dir(name_or_path)
    config = _load_dir_config(path)
    require("safetensors", f"loading {str(path)!r}")
    read_headers(safetensors_files(path))
    if tokenizer:
        check_tokenizer_files(path)
        require("transformers", f"loading the tokenizer of {str(path)!r}")
    return config


def load_model(name_or_path, *, dtype="auto", device=None, quantization=None, seed: int = 0) -> LlamaForCausalLM:
    """Build a `LlamaForCausalLM` from a checkpoint directory or a preset name, in eval mode on `device`.

    Args:
        name_or_path: a local Hugging Face directory, or a preset (`fastcot.models.PRESETS`)
            whose weights are random (drawn on `device` with `seed`).
        dtype: "auto" (the checkpoint's dtype on a GPU, bfloat16 for float32 checkpoints;
            float32 on the CPU), a name ("float16", "bfloat16", "float32") or a torch dtype.
        device: where the weights go; default CUDA when available, else the CPU.
        quantization: None (the checkpoint's own GPTQ/AWQ `quantization_config`, else float),
            "int4" (quantize on load; accepted for an already int4 checkpoint), "gptq" or
            "awq" (asserting the checkpoint's method).

    The model's `config` attribute is its `ModelConfig`.
    """
    from fastcot.models import presets

    device = resolve_device(device)
    if presets.is_preset(name_or_path):
        config = presets.preset_config(name_or_path)
        scheme = quant_scheme(None, quantization)
        return presets.random_model(config, dtype=resolve_dtype(dtype, config, device), device=device,
                                    quantization=scheme, seed=seed)
    from fastcot.models import gguf

    if (gguf_file := gguf.find_gguf(name_or_path)) is not None:
        return gguf.load_gguf_model(gguf_file, dtype=dtype, device=device, quantization=quantization)
    path = checkpoint_dir(name_or_path)
    config = _load_dir_config(path)
    require("safetensors", f"loading {str(path)!r}")
    dtype = resolve_dtype(dtype, config, device)
    scheme = quant_scheme(config.quantization_config, quantization)
    headers = read_headers(safetensors_files(path))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    loader = _CheckpointLoader(model, config, scheme, dtype, device, headers)
    loader.load()
    return model.eval()


def load_tokenizer(name_or_path):
    """The checkpoint's tokenizer via `transformers.AutoTokenizer` (a preset's built-in one for
    a preset name). Its eos ids may differ from generation's: use `ModelConfig.eos_token_ids`."""
    from fastcot.models import presets

    if presets.is_preset(name_or_path):
        return presets.preset_tokenizer(name_or_path)
    from fastcot.models import gguf

    if (gguf_file := gguf.find_gguf(name_or_path)) is not None:
        return gguf.load_gguf_tokenizer(gguf_file)
    path = checkpoint_dir(name_or_path)
    check_tokenizer_files(path)
    transformers = require("transformers", f"loading the tokenizer of {str(path)!r}")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers' and tokenizers' errors do not all name the file
        raise ValueError(f"cannot load the tokenizer in {str(path)!r}: {type(err).__name__}: {err}") from err


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(dtype, config: ModelConfig, device: torch.device) -> torch.dtype:
    """See `load_model`: "auto" is float32 on the CPU (where fastcot's ops compute in it)."""
    if isinstance(dtype, str) and dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if config.torch_dtype == torch.float32 else config.torch_dtype
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be 'auto', one of {sorted(_DTYPE_NAMES)} or a torch dtype, got {dtype!r}")
        return _DTYPE_NAMES[dtype.removeprefix("torch.")]
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    return dtype


def _linear_parts(config: ModelConfig) -> dict[str, tuple[str, int, int, int, bool]]:
    """HF linear prefix -> (fastcot module path, index in its fused group, in, out, has bias)."""
    h, i, q, kv = config.hidden_size, config.intermediate_size, config.q_size, config.kv_size
    parts = {}
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        for index, (name, out) in enumerate((("q_proj", q), ("k_proj", kv), ("v_proj", kv))):
            parts[f"{p}self_attn.{name}"] = (f"{p}self_attn.qkv_proj", index, h, out, config.qkv_bias)
        parts[f"{p}self_attn.o_proj"] = (f"{p}self_attn.o_proj", 0, q, h, config.o_proj_bias)
        for index, name in enumerate(("gate_proj", "up_proj")):
            parts[f"{p}mlp.{name}"] = (f"{p}mlp.gate_up_proj", index, h, i, config.mlp_bias)
        parts[f"{p}mlp.down_proj"] = (f"{p}mlp.down_proj", 0, i, h, config.mlp_bias)
    return parts


class _CheckpointLoader:
    """Checks a checkpoint's tensor headers against the model, then streams the tensors in."""

    def __init__(self, model, config, scheme: QuantScheme | None, dtype, device, headers):
        self.model, self.config, self.scheme = model, config, scheme
        self.dtype, self.device, self.headers = dtype, device, headers
        self.parts = _linear_parts(config)
        self.plain = self._plain_params()
        self.expected = self._expected_tensors()
        self._check_headers()
        # Fused group -> its HF prefixes in row order, the HF names it waits for, and the
        # tensors received so far (per part index).
        self.group_prefixes: dict[str, list[str]] = {}
        for prefix, (group, index, *_) in self.parts.items():
            self.group_prefixes.setdefault(group, []).insert(index, prefix)
        self.group_names: dict[str, set[str]] = {}
        for name in self.expected:
            prefix = name.rpartition(".")[0]
            if prefix in self.parts and name in headers:
                self.group_names.setdefault(self.parts[prefix][0], set()).add(name)
        self.pending: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.received: dict[str, int] = {}

    def _plain_params(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        params = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size), "model.norm.weight": (c.hidden_size,)}
        for layer in range(c.num_hidden_layers):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                params[f"model.layers.{layer}.{norm}.weight"] = (c.hidden_size,)
        if not c.tie_word_embeddings:
            params["lm_head.weight"] = (c.vocab_size, c.hidden_size)
        return params

    def _expected_tensors(self) -> dict[str, tuple[tuple[int, ...], str, bool]]:
        """name -> (shape, "float" or "int", required)."""
        expected = {name: (shape, "float", True) for name, shape in self.plain.items()}
        for prefix, (_, _, k, n, bias) in self.parts.items():
            quantized = f"{prefix}.qweight" in self.headers and self.scheme is not None and self.scheme.method != "int4"
            if not quantized:
                expected[f"{prefix}.weight"] = ((n, k), "float", True)
                if bias:
                    expected[f"{prefix}.bias"] = ((n,), "float", True)
                continue
            for name, (shape, kind, required) in self.scheme.tensor_shapes(k, n).items():
                expected[f"{prefix}.{name}"] = (shape, kind, required)
            expected[f"{prefix}.bias"] = ((n,), "float", bias)  # GPTQ stores biases even without config
        return expected

    def _check_headers(self) -> None:
        for name in self.headers:
            if name not in self.expected and not self._ignored(name):
                hint = ""
                if name.rpartition(".")[2] in _QUANT_SUFFIXES and self.scheme is None:
                    hint = " (an int4 checkpoint tensor, but config.json has no quantization_config)"
                raise ValueError(f"unexpected tensor {name!r} in {self.headers[name][0].name}{hint}")
        for name, (shape, kind, required) in self.expected.items():
            if name not in self.headers:
                if required:
                    raise ValueError(f"checkpoint is missing tensor {name!r} (expected shape {list(shape)})")
                continue
            file, actual, dtype_name = self.headers[name]
            if actual != shape:
                raise ValueError(f"tensor {name!r} in {file.name} has shape {list(actual)}, expected {list(shape)}")
            is_float = dtype_name.startswith(("F", "BF"))
            if is_float != (kind == "float"):
                raise ValueError(f"tensor {name!r} in {file.name} has dtype {dtype_name}, expected a {kind} tensor")

    def _ignored(self, name: str) -> bool:
        if name.endswith(_IGNORED_SUFFIXES):
            return True
        return name == "lm_head.weight" and self.config.tie_word_embeddings

    def load(self) -> None:
        from safetensors import safe_open  # importable: the headers were read with it

        by_file: dict[Path, list[str]] = {}
        for name in self.expected:
            if name in self.headers:
                by_file.setdefault(self.headers[name][0], []).append(name)
        for file, names in by_file.items():
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in names:
                    self._add(name, self._read(f, name))
        unfinished = sorted(self.pending)
        if unfinished:  # unreachable after the header check; kept as the invariant's guard
            raise ValueError(f"incomplete linear layer {unfinished[0]!r}")
        for name, param in list(self.model.named_parameters()) + list(self.model.named_buffers()):
            if param is not None and param.is_meta and self.device.type != "meta":
                raise ValueError(f"no checkpoint tensor for parameter {name!r}")

    def _read(self, file, name: str) -> torch.Tensor:
        """Tensor `name` from an open safetensors file (a tensor-parallel loader reads its slice)."""
        return file.get_tensor(name)

    def _to_device(self, tensor: torch.Tensor, convert: bool = True) -> torch.Tensor:
        if convert and tensor.is_floating_point():
            return tensor.to(device=self.device, dtype=self.dtype)
        return tensor.to(device=self.device)

    def _add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.plain:
            module_name, _, param_name = name.rpartition(".")
            module = self.model.get_submodule(module_name)
            module._parameters[param_name] = nn.Parameter(self._to_device(tensor), requires_grad=False)
            return
        prefix, _, suffix = name.rpartition(".")
        group, index, *_ = self.parts[prefix]
        # int4 scales keep the checkpoint's dtype (exact); the int4 kernels take any float scales.
        tensor = self._to_device(tensor, convert=suffix not in _QUANT_SUFFIXES)
        self.pending.setdefault(group, {}).setdefault(index, {})[suffix] = tensor
        self.received[group] = self.received.get(group, 0) + 1
        if self.received[group] == len(self.group_names[group]):
            self.model.set_submodule(group, self._build_linear(group, self.pending.pop(group)))

    def _build_linear(self, group: str, parts: dict[int, dict[str, torch.Tensor]]) -> nn.Module:
        prefixes = self.group_prefixes[group]
        pieces = [parts[index] for index in range(len(prefixes))]
        sizes = [self.parts[prefix][3] for prefix in prefixes]
        biases = [p.get("bias") for p in pieces]
        if any(b is not None for b in biases):
            biases = [torch.zeros(n, dtype=self.dtype, device=self.device) if b is None else b
                      for b, n in zip(biases, sizes)]
        bias = None if biases[0] is None else torch.cat(biases)
        if all("weight" in p for p in pieces):
            weight = torch.cat([p["weight"] for p in pieces]) if len(pieces) > 1 else pieces[0]["weight"]
            if self.scheme is not None and self.scheme.method == "int4":
                try:
                    return Int4Linear(quantize_int4(weight, group_size=int4_group_size(weight.shape[1])), bias)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"cannot quantize {group!r} to int4: {err}") from err
            return _float_linear(weight, bias)
        weights = []
        for prefix, piece in zip(prefixes, pieces):
            if "weight" in piece:
                weights.append(piece["weight"])
                continue
            try:
                weights.append(self.scheme.import_weight(piece))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{prefix}: {err}") from err
        return linear_from_parts(weights, biases)


def linear_from_parts(weights: list, biases: list) -> nn.Module:
    """One module for a projection's parts along N (each an Int4Weight or a float `[N_i, K]`
    tensor, with its bias or None): one Int4Linear when the int4 parts can share one weight,
    else one linear per part in a ConcatLinear."""
    if all(isinstance(w, Int4Weight) for w in weights):
        fused = stack_rows(weights)
        if fused is not None:
            bias = None if biases[0] is None else torch.cat(biases)
            return Int4Linear(fused, bias)
    modules = [Int4Linear(w, b) if isinstance(w, Int4Weight) else _float_linear(w, b) for w, b in zip(weights, biases)]
    return modules[0] if len(modules) == 1 else ConcatLinear(modules)


def _float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    with torch.device("meta"):
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


