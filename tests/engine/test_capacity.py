"""Capacity known at startup: the KV cache's size from gpu_memory_utilization (or given), logged
with the concurrency it allows, and refused when one sequence of max_model_len cannot fit;
INFO lines of the `fastcot` logger for loading and cache sizing."""

import logging

import pytest
import torch

import fastcot.models
from fastcot import LLM
from fastcot.engine import capacity

GiB = 1 << 30


def sizing(monkeypatch, *, free, total, utilization, max_model_len=8192, **kwargs):
    """`num_kv_blocks` on a pretend GPU with `free` of `total` bytes free."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    config = fastcot.models.load_config("llama-3.1-8b-random")
    return capacity.num_kv_blocks(config, device=torch.device("cuda", 0), block_size=16, kv_dtype=torch.bfloat16,
                                  max_model_len=max_model_len, max_num_seqs=256, max_num_batched_tokens=8192,
                                  gpu_memory_utilization=utilization, num_blocks=None, **kwargs)


def test_gpu_sizing_uses_the_utilization_left_after_what_is_in_use(monkeypatch, caplog):
    config = fastcot.models.load_config("llama-3.1-8b-random")
    per_block = config.kv_cache_bytes_per_block(16, torch.bfloat16)  # 2 MiB for Llama 3.1 8B
    activations = capacity._activation_bytes(config, 256, 8192)
    with caplog.at_level(logging.INFO, logger="fastcot"):
        blocks = sizing(monkeypatch, free=64 * GiB, total=80 * GiB, utilization=0.9)
    assert blocks == (int(0.9 * 80 * GiB) - 16 * GiB - activations) // per_block
    assert sizing(monkeypatch, free=64 * GiB, total=80 * GiB, utilization=0.5) < blocks
    line = caplog.records[0].getMessage()
    assert f"KV cache: {blocks} blocks of 16 tokens = {blocks * 16} tokens" in line
    assert f"max concurrency at max_model_len 8192: {blocks * 16 / 8192:.2f}x" in line
    assert "gpu_memory_utilization=0.9" in line


def test_a_gpu_too_full_for_one_sequence_is_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"cannot hold one sequence of max_model_len=131072: .* one sequence needs "
                                         r"8192 blocks .* raise gpu_memory_utilization.*lower max_model_len"):
        sizing(monkeypatch, free=20 * GiB, total=24 * GiB, utilization=0.9, max_model_len=131072)


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "0.9", True])
def test_bad_gpu_memory_utilization(value):
    with pytest.raises(ValueError, match="gpu_memory_utilization must be a number in"):
        LLM("tiny-random", device="cpu", gpu_memory_utilization=value)


def test_startup_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="fastcot"):
        llm = LLM("tiny-random", device="cpu")
    messages = [r.getMessage() for r in caplog.records if r.name == "fastcot"]
    assert any(m.startswith("loaded tiny-random in") and "GiB of weights, dtype float32, quantization none" in m
               for m in messages)
    # The CPU default: 8 sequences of max_model_len (8192 tokens: 512 blocks), at most 4096 blocks.
    assert llm.block_manager.num_blocks == 4096
    assert any("KV cache: 4096 blocks of 16 tokens = 65536 tokens" in m and "max concurrency at max_model_len 8192: "
               "8.00x" in m for m in messages)


def test_the_cpu_default_holds_at_least_one_sequence():
    config = fastcot.models.load_config("llama-3.1-8b-random")
    blocks = capacity.num_kv_blocks(config, device=torch.device("cpu"), block_size=16, kv_dtype=torch.float32,
                                    max_model_len=131072, max_num_seqs=1, max_num_batched_tokens=8192,
                                    gpu_memory_utilization=0.9, num_blocks=None)
    assert blocks == 8192
