"""fastcot inside Hugging Face transformers: `apply_fastcot` for Llama, Qwen2 and Mistral models.

    import fastcot.integrations.transformers as fct   # registers attn_implementation="fastcot"

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, attn_implementation="fastcot")
    fct.apply_fastcot(model, quantization="int4")
    model.generate(...)
    model.save_pretrained(out)        # int4 layers as GPTQ ("gptq_v2") + quantization_config
    fastcot.LLM(out)                  # ... which fastcot's engine loads,
    fct.load_pretrained(out)          # ... and transformers too, through fastcot

Importing this module registers the "fastcot" attention (`transformers_attention`) with
transformers' `AttentionInterface` and `AttentionMaskInterface`. The patches act on a model's
module instances (not on transformers' classes), so other models are untouched; each flag
swaps one thing, as Liger-Kernel's `apply_liger_kernel_to_llama` does:

- `quantization="int4"`: every decoder `nn.Linear` (q/k/v/o, gate/up/down; not `lm_head`)
  becomes a `fastcot.Int4Linear` (round to nearest, one group size for the whole model:
  `group_size` when it divides every in_features, else the largest smaller one that does).
  GPTQ/AWQ layers a model already holds (`quantization_config` quant_method "gptq"/"awq")
  become `Int4Linear`s with their weights as they are, whatever `quantization` says.
- `norms`: RMSNorm modules run `fastcot.ops.rms_norm`.
- `mlp`: the MLP's `act_fn(gate) * up` runs `fastcot.ops.silu_and_mul` (silu models only).
- `attention`: `model.set_attn_implementation("fastcot")`.

Int4 layers, norms and the MLP activation pass gradients to their inputs (the fused ops
backpropagate through their torch references; int4 weights are frozen); the attention is
inference only. Continuous batching (`generate_batch`) is not served: see docs/integrations.md.
"""

from __future__ import annotations

import torch
from torch import nn

from fastcot import ops
from fastcot.integrations import transformers_attention
from fastcot.kernels import reference
from fastcot.layers import Int4Linear
from fastcot.quant import Int4Weight
from fastcot.quant.int4 import SUPPORTED_GROUP_SIZES, fitting_group_size

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
MIN_TRANSFORMERS = (4, 56)  # AttentionInterface + AttentionMaskInterface, the attention-function contract used
TESTED_TRANSFORMERS = "5.25"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
QUANTIZATIONS = (None, "int4")


def _check_version() -> None:
    import transformers

    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TRANSFORMERS:
        raise ImportError(
            f"fastcot.integrations.transformers needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} "
            f"(tested with {TESTED_TRANSFORMERS}), found {transformers.__version__}"
        )


_check_version()
transformers_attention.register()


def apply_fastcot(model: nn.Module, *, quantization=None, group_size: int = 128, attention: bool = True,
                  norms: bool = True, mlp: bool = True) -> nn.Module:
    """Swap fastcot's kernels into a transformers Llama/Qwen2/Mistral model, in place (see the
    module docstring); returns the model. Raises ValueError for other model types, a
    quantization other than None/"int4", or layers int4 cannot hold (in_features not a
    multiple of 8)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"apply_fastcot supports transformers models of type {SUPPORTED_MODEL_TYPES}, "
                         f"got {type(model).__name__} (model_type={model_type!r})")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if isinstance(group_size, bool) or group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {group_size!r}")
    layers = _decoder_layers(model)
    _convert_held_int4(model, layers)
    if quantization == "int4":
        _quantize_linears(model, layers, group_size)
    for layer in layers:
        if norms:
            for name, module in list(layer.named_children()):
                if _is_rms_norm(module):
                    setattr(layer, name, FastcotRMSNorm.from_module(module))
        if mlp and not isinstance(layer.mlp, FastcotMLP):
            layer.mlp = FastcotMLP.from_module(layer.mlp, model.config)
    if norms and _is_rms_norm(_base(model).norm):
        _base(model).norm = FastcotRMSNorm.from_module(_base(model).norm)
    if attention:
        model.set_attn_implementation("fastcot")
    return model


def quantization_config(model: nn.Module) -> dict | None:
    """The GPTQ `quantization_config` under which a model's `Int4Linear` layers save (their
    `state_dict` is GPTQ "gptq_v2"), or None when it holds none. One group size for all of
    them; `sym` when every layer is symmetric; `desc_act` when any has act-order."""
    weights = [m.weight for m in model.modules() if isinstance(m, Int4Linear)]
    if not weights:
        return None
    sizes = {w.group_size for w in weights}
    if len(sizes) != 1:
        raise ValueError(f"int4 layers with several group sizes {sorted(sizes)} have no single GPTQ quantization_config")
    return {
        "quant_method": "gptq", "bits": 4, "group_size": sizes.pop(), "checkpoint_format": "gptq_v2",
        "sym": all(w.zeros is None and w.mins is None for w in weights),
        "desc_act": any(w.perm is not None for w in weights), "lm_head": False,
    }


def _base(model: nn.Module) -> nn.Module:
    """The decoder stack (`LlamaModel`) of a causal LM or of the stack itself."""
    base = getattr(model, "model", model)
    if not hasattr(base, "layers") or not hasattr(base, "norm"):
        raise ValueError(f"{type(model).__name__} has no decoder stack with `layers` and `norm`")
    return base


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    layers = list(_base(model).layers)
    for index, layer in enumerate(layers):
        for name in LINEARS:
            try:
                layer.get_submodule(name)
            except AttributeError as err:
                raise ValueError(f"decoder layer {index} has no {name!r}: not a Llama-family layer") from err
    return layers


def _replace_linears(layers, convert) -> None:
    """`convert(path, module)` -> a replacement or None, for every decoder linear."""
    for index, layer in enumerate(layers):
        for name in LINEARS:
            replacement = convert(f"model.layers.{index}.{name}", layer.get_submodule(name))
            if replacement is not None:
                layer.set_submodule(name, replacement)


def _quantize_linears(model, layers, group_size: int) -> None:
    float_linears = [layer.get_submodule(name) for layer in layers for name in LINEARS]
    float_linears = [m for m in float_linears if isinstance(m, nn.Linear)]
    if not float_linears:
        return
    for layer in layers:
        for name in LINEARS:
            m = layer.get_submodule(name)
            if isinstance(m, nn.Linear) and m.in_features % 8:
                raise ValueError(f"{name} has in_features={m.in_features}; int4 needs a multiple of 8")
    held = {m.group_size for m in model.modules() if isinstance(m, Int4Linear)}
    # One group size for the model, so that it saves with one quantization_config.
    preferred = held.pop() if len(held) == 1 else group_size
    size = min((fitting_group_size(m.in_features, preferred) for m in float_linears), key=_group_order)

    def convert(path, module):
        if not isinstance(module, nn.Linear):
            return None
        layer = Int4Linear.from_linear(module, group_size=size)
        return layer.to(module.weight.device)

    _replace_linears(layers, convert)
    model.config.quantization_config = quantization_config(model)


def _group_order(group_size: int) -> int:
    """Sort key: smaller groups divide more K; -1 (one group per row) divides every K."""
    return 0 if group_size == -1 else group_size


def _convert_held_int4(model, layers) -> None:
    """GPTQ/AWQ layers (modules holding qweight, qzeros and scales) -> Int4Linear."""
    qc = getattr(model.config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict):
        qc = qc.to_dict()

    def convert(path, module):
        if isinstance(module, (nn.Linear, Int4Linear)):
            return None
        if not all(isinstance(getattr(module, t, None), torch.Tensor) for t in ("qweight", "qzeros", "scales")):
            raise ValueError(f"{path} is a {type(module).__name__}, neither nn.Linear nor a GPTQ/AWQ layer")
        weight = _held_weight(path, module, qc)
        bias = getattr(module, "bias", None)
        return Int4Linear(weight, None if bias is None else bias.detach())

    _replace_linears(layers, convert)


def _held_weight(path: str, module: nn.Module, qc: dict | None) -> Int4Weight:
    from fastcot.models.quant_config import quant_scheme

    if qc is None:
        raise ValueError(f"{path} holds int4 tensors but model.config has no quantization_config")
    scheme = quant_scheme(qc, None)
    tensors = {t: getattr(module, t) for t in ("qweight", "qzeros", "scales", "g_idx") if getattr(module, t, None) is not None}
    if scheme.method == "gptq" and getattr(module, "REQUIRES_FORMAT_V2", False):
        # GPTQModel's kernels that want v2 zero points convert v1 checkpoints when loading.
        scheme = type(scheme)("gptq", group_size=scheme.group_size, sym=scheme.sym, checkpoint_format="gptq_v2")
    try:
        return scheme.import_weight({k: v.detach() for k, v in tensors.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")


class _RecomputeBackward(torch.autograd.Function):
    """Forward through a fused fastcot op; backward through its torch reference, recomputed."""

    @staticmethod
    def forward(ctx, fused, reference_fn, *inputs):
        ctx.reference_fn = reference_fn
        ctx.save_for_backward(*inputs)
        return fused(*inputs)

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_(needs) for t, needs in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(ctx.reference_fn(*inputs), wanted, grad))
        return (None, None, *(next(grads) if t.requires_grad else None for t in inputs))


def _differentiable(fused, reference_fn, *inputs):
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _RecomputeBackward.apply(fused, reference_fn, *inputs)
    return fused(*inputs)


class FastcotRMSNorm(nn.Module):
    """A transformers RMSNorm (`weight`, `variance_epsilon`) computed by `fastcot.ops.rms_norm`."""

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    @classmethod
    def from_module(cls, module: nn.Module) -> "FastcotRMSNorm":
        return cls(module.weight, module.variance_epsilon)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        eps = self.variance_epsilon
        return _differentiable(
            lambda x, w: ops.rms_norm(x, w, eps), lambda x, w: reference.rms_norm(x, w, eps)[0],
            hidden_states, self.weight,
        )

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class FastcotMLP(nn.Module):
    """`down_proj(silu_and_mul([gate_proj(x), up_proj(x)]))`, keeping the model's three
    projections (float or int4) and their state_dict names."""

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    @classmethod
    def from_module(cls, module: nn.Module, config) -> "FastcotMLP":
        act = getattr(config, "hidden_act", None)
        if act != "silu":
            raise ValueError(f"fastcot's MLP activation is silu_and_mul; this model's hidden_act is {act!r}")
        return cls(module.gate_proj, module.up_proj, module.down_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = torch.cat([self.gate_proj(x), self.up_proj(x)], dim=-1)
        return self.down_proj(_differentiable(ops.silu_and_mul, reference.silu_and_mul, gate_up))


def load_pretrained(path, *, dtype: torch.dtype | None = None, device=None, attention: bool = True,
                    norms: bool = True, mlp: bool = True) -> nn.Module:
    """A transformers causal LM from a directory saved with int4 layers (a GPTQ or AWQ
    `quantization_config`, e.g. written by `save_pretrained` after `apply_fastcot`), its int4
    layers as `Int4Linear`, then `apply_fastcot(model, attention=..., norms=..., mlp=...)`.
    Directories without a quantization_config load with `from_pretrained` as usual.

    `dtype` casts the float parameters (int4 scales keep the checkpoint's dtype); `device`
    defaults to the CPU.
    """
    from fastcot.integrations._hf_loading import load_int4_checkpoint

    model = load_int4_checkpoint(path, dtype=dtype, device=device)
    return apply_fastcot(model, attention=attention, norms=norms, mlp=mlp)
