"""Fixtures for the model tests: tiny random transformers checkpoints saved in temporary
directories (see hf_checkpoints.py), and prompts of several lengths."""

import importlib.util

import pytest
import torch
from hf_checkpoints import VARIANTS, Checkpoint, make_hf_model, save_checkpoint

# The `models` extra (transformers, safetensors) is needed to build checkpoints; without it
# these tests are not collected.
if any(importlib.util.find_spec(name) is None for name in ("transformers", "safetensors")):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, Checkpoint]:
    out = {}
    for name, (config_class, fields, shard) in VARIANTS.items():
        model = make_hf_model(config_class, **fields)
        out[name] = Checkpoint(save_checkpoint(model, tmp_path_factory.mktemp(name), shard), model)
    return out


@pytest.fixture(scope="session")
def prompts() -> list[list[int]]:
    """Several prompts of different lengths (within one block, across blocks, exactly one block)."""
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (5, 16, 37, 1)]
