"""Build a transformers model from a checkpoint with int4 (GPTQ/AWQ) layers, without a GPTQ
backend: the skeleton on the meta device, int4 layers as `Int4Linear`, the rest assigned."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fastcot.layers import Int4Linear
from fastcot.models.quant_config import quant_scheme

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_INT4_TENSORS = ("qweight", "qzeros", "scales", "g_idx", "bias")


def load_int4_checkpoint(path, *, dtype=None, device=None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(str(path))
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        kwargs = {} if dtype is None else {"dtype": dtype}
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs).to(device or "cpu")
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    scheme = quant_scheme(qc, None)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    state = _read_safetensors(path)
    built = set()
    for index in range(config.num_hidden_layers):
        for name in LINEARS:
            prefix = f"model.layers.{index}.{name}"
            if f"{prefix}.qweight" not in state:
                continue
            tensors = {t: state.pop(f"{prefix}.{t}") for t in _INT4_TENSORS if f"{prefix}.{t}" in state}
            bias = tensors.pop("bias", None)
            try:
                weight = scheme.import_weight(tensors)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path.name}: {prefix}: {err}") from err
            model.set_submodule(prefix, Int4Linear(weight, bias))
            built.add(prefix + ".")
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in result.missing_keys
               if not (tied and k == "lm_head.weight") and k[:k.rfind(".") + 1] not in built]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path.name}: checkpoint does not match the model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers (rotary inverse frequencies) are not in the checkpoint: rebuild them.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{path.name}: no values for {left[:5]}")
    model.config.quantization_config = qc
    if dtype is not None:
        for module in model.modules():
            if not isinstance(module, Int4Linear):
                for name, param in module.named_parameters(recurse=False):
                    if param.is_floating_point():
                        module._parameters[name] = nn.Parameter(param.data.to(dtype), requires_grad=param.requires_grad)
        if tied:
            model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device or "cpu").eval()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(f.name for f in path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {str(path)!r}")
    state = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state
