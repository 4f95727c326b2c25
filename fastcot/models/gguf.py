"""Load a Llama-family model from a GGUF file (llama.cpp's format), read with the `gguf` package.

`fastcot.LLM` accepts a `.gguf` file, a directory holding exactly one (and no config.json),
or a preset that ships as one (`smollm2-135m-instruct`).

- Architecture and shapes come from the metadata: `general.architecture` "llama" (Llama, and
  Mistral, which llama.cpp writes as "llama"; "mistral" in `general.name` labels it
  MistralForCausalLM) or "qwen2". Other architectures raise ValueError. llama.cpp stores a
  "llama" file's q and k rows permuted for its rotary layout; they are put back in Hugging
  Face order (exactly: rows only move). No `output.weight` means tied embeddings. Llama 3.x
  files carry their rope scaling as a `rope_freqs` tensor, which is matched against the
  llama3 scalings Meta published (factor 8 or 32, low/high frequency factors 1 and 4, original
  context 8192); a tensor matching none of them raises ValueError.
- The tokenizer and chat template come from the file, converted by transformers
  (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`), as transformers' own GGUF loading
  tokenizes; eos ids are the file's eos, eot and eom tokens.
- Tensor types (`fastcot.quant.gguf`): Q4_0 and Q4_1 linears become `Int4Linear`s holding the
  blocks as they are (group 32, no requantization) on a GPU, and on any device with
  `quantization="int4"`. On the CPU with `quantization=None` they are dequantized once at
  load instead (exactly: the same float32 values), because fastcot's int4 matmul there is
  the torch reference, which dequantizes the weight on every call. F32, F16, BF16, Q8_0 and
  the K-quants (Q4_K, Q5_K, Q6_K) are dequantized exactly and kept in `dtype`, or, with
  `quantization="int4"`, quantized like a float checkpoint (`fastcot.quantize_int4`, group
  128 or the largest of 64, 32 dividing K). Embeddings, norms and `output.weight` are always
  float. Parts of a fused projection (q/k/v, gate/up) of different kinds are a
  `ConcatLinear`.
- dtype "auto" on a GPU is bfloat16 when the file holds BF16 tensors, else float16.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from fastcot.models.config import ModelConfig
from fastcot.models.llama import LlamaForCausalLM
from fastcot.models.loader import linear_from_parts, resolve_dtype
from fastcot.models.quant_config import int4_group_size
from fastcot.quant import Int4Weight, quantize_int4
from fastcot.quant.gguf import INT4_TYPES, check_type, dequantize_gguf, int4_from_gguf
from fastcot.quant.int4 import take_rows

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# GGUF tensor in `blk.N.` -> (fastcot module under model.layers.N, index in its fused projection)
LAYER_LINEARS = {
    "attn_q": ("self_attn.qkv_proj", 0), "attn_k": ("self_attn.qkv_proj", 1), "attn_v": ("self_attn.qkv_proj", 2),
    "attn_output": ("self_attn.o_proj", 0),
    "ffn_gate": ("mlp.gate_up_proj", 0), "ffn_up": ("mlp.gate_up_proj", 1), "ffn_down": ("mlp.down_proj", 0),
}
LAYER_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
# Meta's published llama3 rope scalings: (factor, low_freq_factor, high_freq_factor, original context)
LLAMA3_SCALINGS = ((8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (16.0, 1.0, 4.0, 8192))


def find_gguf(name_or_path) -> Path | None:
    """The GGUF file `name_or_path` names (a packaged preset, a `.gguf` file, or a directory
    with one `.gguf` and no config.json), or None when it names something else."""
    from fastcot.models import presets

    packaged = presets.packaged_model_file(name_or_path)
    if packaged is not None:
        return packaged
    if not isinstance(name_or_path, (str, Path)):
        return None
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        files = sorted(path.glob("*.gguf"))
        if len(files) > 1:
            raise ValueError(f"{str(path)!r} holds several GGUF files ({', '.join(f.name for f in files)}); pass one")
        return files[0] if files else None
    return None


@functools.lru_cache(maxsize=2)
def _reader(path: str, mtime_ns: int):
    try:
        from gguf import GGUFReader
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("reading GGUF files needs the gguf package: pip install 'fastcot[gguf]'") from err
    reader = GGUFReader(path)
    if reader.byte_order != "I":
        raise ValueError(f"{Path(path).name}: big-endian GGUF files are not supported")
    return reader


def open_gguf(path) -> GGUFFile:
    path = Path(path)
    return GGUFFile(path, _reader(str(path.resolve()), path.stat().st_mtime_ns))


class GGUFFile:
    """Metadata and tensors of one GGUF file, by name."""

    def __init__(self, path: Path, reader):
        self.path, self.reader = path, reader
        self.tensors = {t.name: t for t in reader.tensors}

    def get(self, key: str, default=...):
        field = self.reader.get_field(key)
        if field is None:
            if default is ...:
                raise ValueError(f"{self.path.name}: GGUF metadata has no {key!r}")
            return default
        return field.contents()

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape in torch order (GGUF lists `ne`, fastest dimension first)."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape))

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def float_tensor(self, name: str) -> torch.Tensor:
        """Any supported type, dequantized exactly to float32."""
        check_type(self.type_name(name), name)
        return dequantize_gguf(self.tensors[name].data, self.type_name(name), self.shape(name))

    def int4_weight(self, name: str) -> Int4Weight:
        return int4_from_gguf(self.tensors[name].data, self.type_name(name), self.shape(name))


def load_gguf_config(path) -> ModelConfig:
    """The `ModelConfig` a GGUF file's metadata describes (see the module docstring)."""
    f = open_gguf(path)
    arch = f.get("general.architecture")
    if arch not in ARCHITECTURES:
        hint = " (llama.cpp writes Mistral models as 'llama')" if arch == "mistral" else ""
        raise ValueError(
            f"{f.path.name}: GGUF architecture {arch!r} not supported{hint}; fastcot reads {list(ARCHITECTURES)}"
        )
    hidden, heads = int(f.get(f"{arch}.embedding_length")), int(f.get(f"{arch}.attention.head_count"))
    head_dim = int(f.get(f"{arch}.attention.key_length", hidden // heads))
    rotary_dim = int(f.get(f"{arch}.rope.dimension_count", head_dim))
    if rotary_dim != head_dim:
        raise ValueError(f"{f.path.name}: rotary on {rotary_dim} of {head_dim} head dims is not supported")
    theta = float(f.get(f"{arch}.rope.freq_base", 10000.0))
    architecture = ARCHITECTURES[arch]
    if arch == "llama" and "mistral" in str(f.get("general.name", "")).lower():
        architecture = "MistralForCausalLM"
    if "token_embd.weight" not in f.tensors:
        raise ValueError(f"{f.path.name}: missing tensor 'token_embd.weight'")
    eos = [f.get(f"tokenizer.ggml.{k}_token_id", None) for k in ("eos", "eot", "eom")]
    return ModelConfig(
        architecture=architecture,
        hidden_size=hidden,
        intermediate_size=int(f.get(f"{arch}.feed_forward_length")),
        num_hidden_layers=int(f.get(f"{arch}.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(f.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        vocab_size=f.shape("token_embd.weight")[0],
        max_position_embeddings=int(f.get(f"{arch}.context_length")),
        rms_norm_eps=float(f.get(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=theta,
        rope_scaling=_rope_scaling(f, arch, theta, head_dim),
        tie_word_embeddings="output.weight" not in f.tensors,
        qkv_bias="blk.0.attn_q.bias" in f.tensors,
        o_proj_bias="blk.0.attn_output.bias" in f.tensors,
        mlp_bias="blk.0.ffn_up.bias" in f.tensors,
        torch_dtype=torch.bfloat16 if any(t.tensor_type.name == "BF16" for t in f.reader.tensors) else torch.float16,
        bos_token_id=f.get("tokenizer.ggml.bos_token_id", None),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        sliding_window=f.get(f"{arch}.attention.sliding_window", None),
        hf_config={"model_type": arch, "architectures": [architecture], "gguf_file": str(f.path)},
    )


def _rope_scaling(f: GGUFFile, arch: str, theta: float, head_dim: int) -> dict | None:
    kind = f.get(f"{arch}.rope.scaling.type", "none")
    if "rope_freqs.weight" in f.tensors:
        if kind not in ("none", "linear") or float(f.get(f"{arch}.rope.scaling.factor", 1.0)) != 1.0:
            raise ValueError(f"{f.path.name}: rope_freqs together with rope scaling {kind!r} is not supported")
        return _llama3_from_rope_freqs(f, theta, head_dim)
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(f.get(f"{arch}.rope.scaling.factor"))}
    raise ValueError(f"{f.path.name}: rope scaling {kind!r} not supported; fastcot runs none, linear and llama3")


def _llama3_from_rope_freqs(f: GGUFFile, theta: float, head_dim: int) -> dict:
    """The llama3 scaling whose per-frequency factors (as llama.cpp's converter writes them to
    `rope_freqs`) match the file's."""
    stored = f.float_tensor("rope_freqs.weight").double()
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * torch.pi / freqs
    for factor, low, high, original in LLAMA3_SCALINGS:
        smooth = ((original / wavelen - low) / (high - low)).clamp(0, 1)
        expected = 1 / ((1 - smooth) / factor + smooth)
        expected = torch.where(wavelen < original / high, 1.0, torch.where(wavelen > original / low, factor, expected))
        if stored.shape == expected.shape and torch.allclose(stored, expected, rtol=1e-5, atol=0):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": original}
    raise ValueError(f"{f.path.name}: rope_freqs matches none of the llama3 rope scalings {LLAMA3_SCALINGS}")


def load_gguf_tokenizer(path):
    """The file's tokenizer and chat template, converted by transformers."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf_model(path, *, dtype="auto", device: torch.device, quantization=None) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` with a GGUF file's weights, in eval mode on `device` (see the module
    docstring for tensor types and `quantization`: None or "int4")."""
    if quantization not in (None, "int4"):
        raise ValueError(
            f"quantization must be None or 'int4' for a GGUF file (its tensor types are its quantization), "
            f"got {quantization!r}"
        )
    f = open_gguf(path)
    config = load_gguf_config(path)
    dtype = resolve_dtype(dtype, config, device)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    _GGUFWeights(f, config, dtype, device, quantization).load_into(model)
    return model.eval()


class _GGUFWeights:
    def __init__(self, f: GGUFFile, config: ModelConfig, dtype, device, quantization):
        self.f, self.config, self.dtype, self.device, self.quantization = f, config, dtype, device, quantization
        self.permute_qk = config.hf_config["model_type"] == "llama"

    def expected(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        h, i = c.hidden_size, c.intermediate_size
        shapes = {"token_embd.weight": (c.vocab_size, h), "output_norm.weight": (h,)}
        if not c.tie_word_embeddings:
            shapes["output.weight"] = (c.vocab_size, h)
        sizes = {"attn_q": (c.q_size, h), "attn_k": (c.kv_size, h), "attn_v": (c.kv_size, h),
                 "attn_output": (h, c.q_size), "ffn_gate": (i, h), "ffn_up": (i, h), "ffn_down": (h, i)}
        for layer in range(c.num_hidden_layers):
            for name, shape in sizes.items():
                shapes[f"blk.{layer}.{name}.weight"] = shape
            for name in LAYER_NORMS:
                shapes[f"blk.{layer}.{name}.weight"] = (h,)
            biases = [("attn_q", c.q_size), ("attn_k", c.kv_size), ("attn_v", c.kv_size)] if c.qkv_bias else []
            biases += [("attn_output", h)] if c.o_proj_bias else []
            biases += [("ffn_gate", i), ("ffn_up", i), ("ffn_down", h)] if c.mlp_bias else []
            for name, n in biases:
                shapes[f"blk.{layer}.{name}.bias"] = (n,)
        return shapes

    def check(self) -> None:
        expected = self.expected()
        for name in self.f.tensors:
            if name not in expected and name != "rope_freqs.weight":
                raise ValueError(f"{self.f.path.name}: unexpected tensor {name!r}")
        for name, shape in expected.items():
            if name not in self.f.tensors:
                raise ValueError(f"{self.f.path.name}: missing tensor {name!r} (expected shape {list(shape)})")
            if self.f.shape(name) != shape:
                raise ValueError(f"{self.f.path.name}: tensor {name!r} has shape {list(self.f.shape(name))}, "
                                 f"expected {list(shape)}")
            check_type(self.f.type_name(name), name)

    def load_into(self, model: LlamaForCausalLM) -> None:
        self.check()
        c = self.config
        self._set_param(model.model.embed_tokens, "weight", "token_embd.weight")
        self._set_param(model.model.norm, "weight", "output_norm.weight")
        if not c.tie_word_embeddings:
            self._set_param(model.lm_head, "weight", "output.weight")
        for layer in range(c.num_hidden_layers):
            prefix = f"blk.{layer}."
            block = model.model.layers[layer]
            for name, module in LAYER_NORMS.items():
                self._set_param(block.get_submodule(module), "weight", f"{prefix}{name}.weight")
            groups: dict[str, list[str]] = {}
            for name, (module, index) in LAYER_LINEARS.items():
                groups.setdefault(module, []).insert(index, name)
            for module, names in groups.items():
                block.set_submodule(module, self._linear([prefix + name for name in names]))

    def _set_param(self, module: nn.Module, param: str, name: str) -> None:
        value = self.f.float_tensor(name).to(device=self.device, dtype=self.dtype)
        module._parameters[param] = nn.Parameter(value, requires_grad=False)

    def _row_order(self, name: str) -> torch.Tensor | None:
        """llama.cpp's q/k permutation, undone: HF row i is stored row order[i]."""
        if not self.permute_qk or not (".attn_q." in name or ".attn_k." in name):
            return None
        c = self.config
        heads = c.num_attention_heads if ".attn_q." in name else c.num_key_value_heads
        rows = self.f.shape(name)[0]
        return torch.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(rows)

    def _weight(self, name: str):
        """An Int4Weight (Q4_0/Q4_1, or requantized with "int4") or a float tensor, in HF row order."""
        order = self._row_order(name)
        native_int4 = self.quantization == "int4" or self.device.type != "cpu"
        if self.f.type_name(name) in INT4_TYPES and native_int4:
            weight = self.f.int4_weight(name)
            return (weight if order is None else take_rows(weight, order)).to(self.device)
        value = self.f.float_tensor(name)
        if order is not None:
            value = value[order]
        value = value.to(device=self.device, dtype=self.dtype)
        if self.quantization == "int4":
            try:
                return quantize_int4(value, group_size=int4_group_size(value.shape[1]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"cannot quantize {name!r} to int4: {err}") from err
        return value

    def _bias(self, name: str) -> torch.Tensor | None:
        bias_name = name.removesuffix(".weight") + ".bias"
        if bias_name not in self.f.tensors:
            return None
        value = self.f.float_tensor(bias_name)
        order = self._row_order(bias_name)
        return (value if order is None else value[order]).to(device=self.device, dtype=self.dtype)

    def _linear(self, names: list[str]) -> nn.Module:
        weights = [self._weight(f"{name}.weight") for name in names]
        biases = [self._bias(f"{name}.weight") for name in names]
        bias = None if biases[0] is None else torch.cat(biases)
        if all(isinstance(w, torch.Tensor) for w in weights):
            return linear_from_parts([torch.cat(weights)], [bias])
        return linear_from_parts(weights, biases)
