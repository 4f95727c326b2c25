"""Tiny random transformers models (Llama, Qwen2, Mistral) in float32 for the integration tests."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("transformers") is None:
    collect_ignore_glob = ["test_*.py"]

INIT_RANGE = 0.2  # large enough that greedy decoding does not repeat one token
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=261, max_position_embeddings=512, initializer_range=INIT_RANGE, bos_token_id=256, eos_token_id=257,
)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None, rope_theta=1e6)),
}


def make_model(arch: str, seed: int = 1234, **fields) -> torch.nn.Module:
    """A float32 eval-mode model with random weights, norm weights and biases."""
    import transformers

    config_class, model_class, extra = ARCHS[arch]
    config = getattr(transformers, config_class)(**{**TINY, **extra, **fields})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, INIT_RANGE)
            elif name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def clone(model: torch.nn.Module) -> torch.nn.Module:
    twin = type(model)(model.config).float().eval()
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture
def batch():
    """Two prompts, the second left-padded by 3 tokens, as `generate` pads."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 256, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    return ids, mask
