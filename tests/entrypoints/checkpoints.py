"""Tiny checkpoints for the server tests, saved as Hugging Face directories so that a server
subprocess loads them by path: a Llama with random weights large enough that greedy decoding
varies with the prompt, and the tiny-random preset's byte tokenizer; the reasoning variant has
`<think>`/`</think>` tokens (tests/reasoning/thinking_tokenizer.py) and a chat template that
opens `<think>` unless `enable_thinking` is false (then it writes an empty thinking section,
as Qwen3's does)."""

from __future__ import annotations

from pathlib import Path

from helpers import load_test_module

hf_checkpoints = load_test_module("models/hf_checkpoints.py")
thinking_tokenizer = load_test_module("reasoning/thinking_tokenizer.py")

# The preset tokenizer's ids: bytes 0..255, then <|begin_of_text|> 256, <|end_of_text|> 257, ...
VOCAB = dict(vocab_size=261, bos_token_id=256, eos_token_id=[257, 260])
THINKING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ content }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% if enable_thinking is not defined or enable_thinking %}<think>\n{% else %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def build(plain: Path, reasoning: Path) -> dict[str, Path]:
    """Both checkpoints (the same weights) in the given empty directories."""
    import shutil

    from fastcot.models import load_tokenizer

    model = hf_checkpoints.make_hf_model("LlamaConfig", max_position_embeddings=1024, **VOCAB)
    hf_checkpoints.save_checkpoint(model, plain)
    for item in plain.iterdir():
        shutil.copy(item, reasoning / item.name)
    load_tokenizer("tiny-random").save_pretrained(str(plain))
    tokenizer = thinking_tokenizer.build_thinking_tokenizer()
    tokenizer.chat_template = THINKING_TEMPLATE
    tokenizer.save_pretrained(str(reasoning))
    return {"plain": plain, "reasoning": reasoning}
