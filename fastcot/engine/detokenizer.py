"""Incremental detokenization whose cost per token does not grow with the output length."""

from __future__ import annotations

import codecs
import functools
import json
import random
from collections.abc import Sequence


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas (special tokens skipped unless
    `skip_special_tokens=False`).

    The concatenated deltas equal `tokenizer.decode(all ids, skip_special_tokens=...)` for
    valid UTF-8 output. An incomplete UTF-8 character (a byte token, or a character split over
    tokens) is held back until the token that completes it. Each token costs the same however
    long the output. Three ways, fastest first:

    - byte-level BPE tokenizers (Llama 3, Qwen2): each token is a fixed byte string
      (`byte_table`), fed to Python's incremental UTF-8 decoder;
    - other fast tokenizers (a Rust `tokenizers.Tokenizer` behind them, e.g. SentencePiece-style
      Llama 2 and Mistral): the library's own `tokenizers.decoders.DecodeStream`;
    - otherwise each call decodes a short window of recent tokens twice with `decode`.

    Args:
        tokenizer: a transformers tokenizer or a `tokenizers.Tokenizer`.
        context: token ids whose text has already been emitted (not returned again); they
            only shape the text of the tokens that follow.
        skip_special_tokens: leave special tokens' text out (the default), as `decode` does.
    """

    def __init__(self, tokenizer, context: Sequence[int] = (), *, skip_special_tokens: bool = True):
        from tokenizers import Tokenizer

        context = list(context[-8:])
        backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
        skip = bool(skip_special_tokens)
        table = (byte_table(backend) if skip else byte_table(backend, skip_special_tokens=False)) \
            if isinstance(backend, Tokenizer) else None
        if table is not None:
            utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            # Bytes of the context that do not complete a character yet.
            pending = b"".join(table[t] if 0 <= t < len(table) else b"" for t in context)
            utf8.decode(pending[_complete_prefix(pending):])
            self.add = functools.partial(_add_bytes, utf8.decode, table)
        elif isinstance(backend, Tokenizer):
            from tokenizers.decoders import DecodeStream

            # The stream's own step, bound: no Python frame per token (host budget).
            self.add = functools.partial(DecodeStream(ids=context, skip_special_tokens=skip).step, backend)
        self._decode_fn = functools.partial(tokenizer.decode, skip_special_tokens=skip)
        self.ids: list[int] = context
        self.read = len(self.ids)  # end of the text already emitted
        # Tokens of a character the context leaves incomplete emitted nothing yet.
        while self.read and self._decode_fn(self.ids[: self.read]).endswith("\ufffd"):
            self.read -= 1
        self.prefix = max(0, self.read - 5)  # start of the decoding window

    def add(self, token: int) -> str | None:
        """The text that `token` completes ("" or None while a character is incomplete)."""
        self.ids.append(token)
        before = self._decode_fn(self.ids[self.prefix : self.read])
        text = self._decode_fn(self.ids[self.prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


def _add_bytes(decode, table: list[bytes], token: int) -> str:
    return decode(table[token]) if 0 <= token < len(table) else ""


def _complete_prefix(data: bytes) -> int:
    """Length of `data` up to the start of a trailing incomplete UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): does its character fit?
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


@functools.lru_cache(maxsize=8)
def _gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character map that byte-level BPE vocabularies
    are written in: printable Latin-1 bytes stand for themselves, the other bytes for
    characters from U+0100 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_TABLES: dict[tuple[int, bool], tuple[object, list[bytes] | None]] = {}


def byte_table(backend, skip_special_tokens: bool = True) -> list[bytes] | None:
    """Each token id's bytes, for a `tokenizers.Tokenizer` with a byte-level decoder (special
    tokens empty, or their text with `skip_special_tokens=False`; other added tokens their
    text); None for any other tokenizer, or if the table does not reproduce the tokenizer's own
    decoding on a sample of ids. Cached per tokenizer."""
    key = (id(backend), skip_special_tokens)
    cached = _TABLES.get(key)
    if cached is not None and cached[0] is backend:
        return cached[1]
    table = _build_byte_table(backend, skip_special_tokens)
    _TABLES[key] = (backend, table)
    return table


def _build_byte_table(backend, skip_special_tokens: bool) -> list[bytes] | None:
    spec = json.loads(backend.to_str())
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        return None
    to_byte = _gpt2_unicode_to_byte()
    table = [b""] * backend.get_vocab_size(with_added_tokens=True)
    try:
        for token, i in backend.get_vocab(with_added_tokens=False).items():
            table[i] = bytes(to_byte[c] for c in token)
    except KeyError:  # a token outside the byte alphabet: not a plain byte-level vocabulary
        return None
    for i, added in backend.get_added_tokens_decoder().items():
        skipped = added.special and skip_special_tokens
        table[i] = b"" if skipped else backend.decode([i], skip_special_tokens=skip_special_tokens).encode()
    # Check against the tokenizer itself: single tokens, and runs that split characters.
    rng = random.Random(0)
    ids = list(range(min(len(table), 512))) + rng.sample(range(len(table)), min(len(table), 1024))
    runs = [[rng.randrange(len(table)) for _ in range(8)] for _ in range(64)]
    for run in [[i] for i in ids] + runs:
        decoded = backend.decode(run, skip_special_tokens=skip_special_tokens)
        if b"".join(table[i] for i in run).decode("utf-8", "replace") != decoded:
            return None
    return table
