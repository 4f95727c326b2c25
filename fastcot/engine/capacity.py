"""What the engine knows at startup: the KV cache's size (checked against `max_model_len` and
logged), the checkpoint's generation defaults, a reasoning model's thinking delimiters, and
the `fastcot` logger's default output."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from fastcot.reasoning import find_thinking_delimiters

logger = logging.getLogger("fastcot")

GiB = 1 << 30
# On the CPU (tests, tiny models): enough blocks for this many sequences of max_model_len ...
CPU_SEQUENCES = 8
CPU_MAX_BLOCKS = 4096  # ... but no more blocks than this, unless one sequence needs more
# Keys of generation_config.json that become SamplingParams defaults (vLLM's list).
GENERATION_DEFAULTS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                       "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


class _DefaultHandler(logging.StreamHandler):
    """Prints the `fastcot` logger's records on stderr unless the application configured
    logging itself (a handler on the root logger), which then prints them by propagation."""

    def emit(self, record):
        if not logging.getLogger().handlers:
            super().emit(record)


def configure_default_logging() -> None:
    """INFO lines of the `fastcot` logger on stderr by default, as vLLM does;
    `FASTCOT_CONFIGURE_LOGGING=0` leaves logging alone."""
    if os.environ.get("FASTCOT_CONFIGURE_LOGGING", "1") == "0" or logger.handlers:
        return
    handler = _DefaultHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s fastcot: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def model_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (weights as stored: packed int4 included)."""
    if not isinstance(model, torch.nn.Module):
        return 0
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def num_kv_blocks(config, *, device: torch.device, block_size: int, kv_dtype: torch.dtype, max_model_len: int,
                  max_num_seqs: int, max_num_batched_tokens: int, gpu_memory_utilization: float,
                  num_blocks: int | None) -> int:
    """The KV cache's size in blocks, logged with the tokens it holds and the concurrency it
    allows at `max_model_len`. Refuses (ValueError, with the numbers and what to change) a
    cache that cannot hold one sequence of `max_model_len`.

    `num_blocks` given: that many. On a GPU: `gpu_memory_utilization` of the device's memory,
    less what is in use now (the weights, other processes) and an estimate of the activations
    of a `max_num_batched_tokens` prefill. On the CPU: enough for 8 sequences of
    `max_model_len`, at most 4096 blocks, at least one sequence."""
    if isinstance(gpu_memory_utilization, bool) or not isinstance(gpu_memory_utilization, (int, float)) \
            or not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be a number in (0, 1], got {gpu_memory_utilization!r}")
    per_block = config.kv_cache_bytes_per_block(block_size, kv_dtype)
    need = -(-max_model_len // block_size)
    if num_blocks is not None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_kv_blocks must be a positive int or None, got {num_blocks!r}")
        how, fix = "num_kv_blocks", f"give num_kv_blocks >= {need}"
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        activations = _activation_bytes(config, max_num_seqs, max_num_batched_tokens)
        budget = int(gpu_memory_utilization * total) - (total - free) - activations
        num_blocks = max(0, budget // per_block)
        how = (f"gpu_memory_utilization={gpu_memory_utilization}: {gpu_memory_utilization * total / GiB:.2f} of "
               f"{total / GiB:.2f} GiB, less {(total - free) / GiB:.2f} GiB in use and an estimated "
               f"{activations / GiB:.2f} GiB of activations")
        fix = "raise gpu_memory_utilization, free GPU memory, or use kv_cache_dtype='fp8'"
    else:
        num_blocks = max(need, min(CPU_MAX_BLOCKS, CPU_SEQUENCES * need))
        how, fix = "the CPU default", "give num_kv_blocks"
    tokens = num_blocks * block_size
    if num_blocks < need:
        raise ValueError(
            f"the KV cache cannot hold one sequence of max_model_len={max_model_len}: it has {num_blocks} blocks of "
            f"{block_size} tokens ({tokens} tokens, {num_blocks * per_block / GiB:.3f} GiB; sized by {how}), and one "
            f"sequence needs {need} blocks ({need * per_block / GiB:.3f} GiB). Either {fix}, or lower max_model_len "
            f"to at most {tokens}.")
    logger.info("KV cache: %d blocks of %d tokens = %d tokens, %.3f GiB (%s, %s); max concurrency at "
                "max_model_len %d: %.2fx", num_blocks, block_size, tokens, num_blocks * per_block / GiB,
                str(kv_dtype).removeprefix("torch."), how, max_model_len, tokens / max_model_len)
    return num_blocks


def _activation_bytes(config, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """A rough upper bound on a step's temporaries: per prefill token the widest hidden states
    (gate/up and q/k/v projections, norms, residual), per sampled row the float32 logits and
    the sampler's [B, V] temporaries."""
    element = torch.empty((), dtype=config.torch_dtype).element_size()
    per_token = (2 * config.intermediate_size + config.q_size + 2 * config.kv_size + 4 * config.hidden_size) * element
    per_row = 4 * 4 * config.vocab_size
    return 2 * (max_num_batched_tokens * per_token + max_num_seqs * per_row)


def generation_defaults(model, mode: str) -> dict:
    """`SamplingParams` defaults from the checkpoint's `generation_config.json` (`mode="auto"`,
    vLLM's `generation_config="auto"`: temperature, top_p, top_k, min_p, repetition_penalty,
    max_new_tokens as max_tokens; `do_sample` is ignored, as vLLM does), or none (`"vllm"`, or
    a model without that file)."""
    if mode not in ("auto", "vllm"):
        raise ValueError(f"generation_config must be 'auto' or 'vllm', got {mode!r}")
    if mode == "vllm" or not isinstance(model, (str, os.PathLike)):
        return {}
    path = Path(model) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it, or pass "
                         "generation_config='vllm' to ignore it") from None
    defaults = {ours: data[theirs] for theirs, ours in GENERATION_DEFAULTS.items() if data.get(theirs) is not None}
    if defaults:
        logger.info("sampling defaults from %s: %s", path, defaults)
    return defaults


def thinking_delimiters(tokenizer, spec):
    """The engine's thinking delimiters from `LLM(thinking_delimiters=...)` (see there)."""
    if spec is False:
        return None
    if spec is None:
        found = find_thinking_delimiters(tokenizer) if hasattr(tokenizer, "get_vocab") else None
        if found is not None and (len(found.start_ids) != 1 or len(found.end_ids) != 1):
            return None  # only single-token delimiters are tracked
        return found
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(x, str) for x in spec)):
        raise ValueError(f"thinking_delimiters must be None, False or a (start, end) pair of strings, got {spec!r}")
    found = find_thinking_delimiters(tokenizer, *spec)
    for name, ids in (("start", found.start_ids), ("end", found.end_ids)):
        if len(ids) != 1:
            raise ValueError(f"thinking_delimiters {name} {getattr(found, name)!r} is {len(ids)} tokens in this "
                             f"tokenizer ({ids}); each delimiter must be a single token")
    return found
