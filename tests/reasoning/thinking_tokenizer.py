"""A test tokenizer with thinking delimiters that fit the tiny-random preset's vocabulary.

The tiny-random preset has `vocab_size == 261`: bytes 0..255 and five specials at 256..260,
no free id. `add_tokens` would put `<think>` / `</think>` at 261 / 262, outside the model's
embedding. Instead they take the ids of bytes 0xFE and 0xFF, which never occur in UTF-8
text, so every Python string still encodes and decodes exactly as with the preset tokenizer.

Like DeepSeek-R1's and Qwen3's, the delimiters are added tokens that are not special: a decode
with `skip_special_tokens=True` (the engine's detokenizer) keeps them in the text. The chat
template (the preset's Llama-3 one) drops the reasoning of earlier assistant turns and, by
default, opens `<think>` at the end of the generation prompt as DeepSeek-R1's does.

From another test directory (no packages under tests/), load it by path, e.g.
`importlib.util.spec_from_file_location("thinking_tokenizer", tests_dir / "reasoning" / "thinking_tokenizer.py")`.
"""

from __future__ import annotations

import json

THINK_START, THINK_END = "<think>", "</think>"
THINK_START_ID, THINK_END_ID = 254, 255  # the ids of bytes 0xFE and 0xFF in the preset

_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ content }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% if open_thinking %}<think>\n{% endif %}{% endif %}"
)


def build_thinking_tokenizer(*, template_opens_thinking: bool = True):
    """The tiny-random preset's byte tokenizer with `<think>` = 254 and `</think>` = 255.

    A new transformers tokenizer each call (the preset's own is cached and shared: never
    mutate it). `template_opens_thinking`: the generation prompt ends with "<think>\\n".
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from fastcot.models import load_tokenizer

    preset = load_tokenizer("tiny-random")
    spec = json.loads(preset.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    by_id = {token_id: token for token, token_id in vocab.items()}
    for content, token_id in ((THINK_START, THINK_START_ID), (THINK_END, THINK_END_ID)):
        del vocab[by_id[token_id]]
        vocab[content] = token_id
        spec["added_tokens"].append({
            "id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": False,
        })
    template = _TEMPLATE.replace("open_thinking", "true" if template_opens_thinking else "false")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=preset.bos_token,
        eos_token=preset.eos_token, chat_template=template,
    )
