"""Request inputs as vLLM takes them: prompts (a string, token ids, or a prompt dict) and chat
conversations (put through the tokenizer's chat template)."""

from __future__ import annotations

import operator
from collections.abc import Mapping

PROMPT_KEYS = ("prompt", "prompt_token_ids")


def prompt_type_error(prompt) -> TypeError:
    return TypeError("a prompt must be a str, a list of token ids, or a dict {'prompt': str} or "
                     f"{{'prompt_token_ids': [int, ...]}}, got {_describe(prompt)}")


def _describe(value) -> str:
    if isinstance(value, (list, tuple)) and value:
        odd = next((v for v in value if not _is_int(v)), value[0])
        return f"{type(value).__name__} holding {type(odd).__name__}"
    return type(value).__name__


def _token_ids(ids, where: str) -> list[int]:
    if not isinstance(ids, (list, tuple)) or isinstance(ids, str):
        raise TypeError(f"{where} must be a list of token ids, got {_describe(ids)}")
    out = []
    for t in ids:
        if isinstance(t, bool):
            raise TypeError(f"{where} must hold ints (token ids), got a bool")
        try:
            out.append(operator.index(t))
        except TypeError:
            raise TypeError(f"{where} must hold ints (token ids), got {type(t).__name__}") from None
    return out


def is_single_prompt(prompts) -> bool:
    """A single prompt (as opposed to a list of prompts): a str, a dict, or a list of ints."""
    if isinstance(prompts, (str, Mapping)):
        return True
    return isinstance(prompts, (list, tuple)) and bool(prompts) and not isinstance(prompts[0], bool) \
        and _is_int(prompts[0])


def _is_int(value) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def as_prompt_list(prompts) -> list:
    """`prompts` as a list of single prompts (see `parse_prompt`); TypeError for anything else."""
    if prompts is None or isinstance(prompts, (bytes, int, float)):
        raise TypeError(f"prompts must be a prompt or a list of prompts, got {type(prompts).__name__}: "
                        "a prompt is a str, a list of token ids, or a dict {'prompt': str} or "
                        "{'prompt_token_ids': [int, ...]}")
    if is_single_prompt(prompts):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a prompt or a list of prompts, got {type(prompts).__name__}")
    return list(prompts)


def parse_prompt(prompt, tokenizer) -> tuple[str | None, list[int]]:
    """`(text or None, token ids)` of one prompt: a str (encoded with the tokenizer), a list of
    token ids, or a vLLM prompt dict `{"prompt": str}` / `{"prompt_token_ids": [...]}` (with
    both, the ids are used and the text kept as the output's `prompt`)."""
    if isinstance(prompt, str):
        return prompt, list(tokenizer.encode(prompt)) if prompt else []
    if isinstance(prompt, Mapping):
        unknown = set(prompt) - set(PROMPT_KEYS)
        if unknown:
            raise ValueError(f"a prompt dict takes the keys {list(PROMPT_KEYS)}, got unknown keys {sorted(unknown)}")
        if "prompt_token_ids" in prompt:
            text = prompt.get("prompt")
            if text is not None and not isinstance(text, str):
                raise TypeError(f"prompt['prompt'] must be a str, got {type(text).__name__}")
            return text, _token_ids(prompt["prompt_token_ids"], "prompt['prompt_token_ids']")
        if "prompt" in prompt:
            text = prompt["prompt"]
            if not isinstance(text, str):
                raise TypeError(f"prompt['prompt'] must be a str, got {type(text).__name__}")
            return text, list(tokenizer.encode(text)) if text else []
        raise ValueError(f"a prompt dict needs 'prompt' or 'prompt_token_ids', got keys {sorted(prompt)}")
    if isinstance(prompt, (list, tuple)) and all(_is_int(t) for t in prompt):
        return None, _token_ids(prompt, "a prompt")
    raise prompt_type_error(prompt)


# ---- chat --------------------------------------------------------------------------------------


def as_conversations(messages) -> list[list[dict]]:
    """`messages` (one conversation: a list of `{"role", "content"}` dicts; or a list of such
    conversations) as a list of conversations; TypeError for anything else."""
    if isinstance(messages, (list, tuple)) and messages and all(isinstance(m, Mapping) for m in messages):
        conversations = [list(messages)]
    elif isinstance(messages, (list, tuple)) and messages and all(isinstance(c, (list, tuple)) for c in messages):
        conversations = [list(c) for c in messages]
    else:
        raise TypeError("messages must be a conversation (a list of {'role': ..., 'content': ...} dicts) or a "
                        f"list of conversations, got {_describe(messages)}"
                        + (" (use generate() for a plain text prompt)" if isinstance(messages, str) else ""))
    for c, conversation in enumerate(conversations):
        if not conversation:
            raise ValueError(f"conversation {c} is empty")
        for m, message in enumerate(conversation):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise TypeError(f"conversation {c}, message {m} must be a dict with a str 'role', got {message!r}")
            content = message.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise TypeError(f"conversation {c}, message {m}: 'content' must be a str or a list of parts, "
                                f"got {type(content).__name__}")
    return conversations


def _text_content(message: Mapping) -> dict:
    """The message with a list of text parts (OpenAI's content format) joined into one string."""
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise ValueError(f"only text content parts are supported, got {part!r}")
    return {**message, "content": "".join(texts)}


def apply_chat_template(tokenizer, conversation: list[dict], *, chat_template: str | None = None,
                        chat_template_kwargs: dict | None = None, add_generation_prompt: bool = True,
                        continue_final_message: bool = False) -> list[int]:
    """The token ids of one conversation under the tokenizer's chat template (or `chat_template`)."""
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be True: the first starts "
                         "a new assistant turn, the second continues the last message")
    if continue_final_message and conversation[-1].get("role") != "assistant":
        raise ValueError("continue_final_message=True needs a last message with role 'assistant', "
                         f"got {conversation[-1].get('role')!r}")
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; pass chat_template=... or use generate() with a "
                         "plain prompt")
    if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, Mapping):
        raise TypeError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}")
    ids = tokenizer.apply_chat_template(
        [_text_content(m) for m in conversation], chat_template=chat_template, tokenize=True,
        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
        **(chat_template_kwargs or {}),
    )
    if isinstance(ids, Mapping) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
