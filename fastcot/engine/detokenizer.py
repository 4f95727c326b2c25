"""Incremental detokenization whose cost per token does not grow with the output length."""

from __future__ import annotations

from collections.abc import Sequence


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas (special tokens skipped).

    The concatenated deltas equal `tokenizer.decode(all ids, skip_special_tokens=True)`. An
    incomplete UTF-8 character (a byte token, or a character split over tokens) is held back
    until the token that completes it. Each token costs the same however long the output.

    With a fast tokenizer (a Rust `tokenizers.Tokenizer` behind it) this is the library's own
    `tokenizers.decoders.DecodeStream`; otherwise each call decodes a short window of recent
    tokens twice (the same algorithm) with the tokenizer's `decode`.

    Args:
        tokenizer: a transformers tokenizer or a `tokenizers.Tokenizer`.
        context: token ids whose text has already been emitted (not returned again); they
            only shape the text of the tokens that follow.
    """

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        from tokenizers import Tokenizer

        backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
        self._stream = None
        if isinstance(backend, Tokenizer):
            from tokenizers.decoders import DecodeStream

            self._backend = backend
            self._stream = DecodeStream(ids=list(context[-8:]), skip_special_tokens=True)
        self._decode_fn = tokenizer.decode
        self.ids: list[int] = list(context[-8:])
        self.prefix = max(0, len(self.ids) - 5)  # start of the decoding window
        self.read = len(self.ids)  # end of the text already emitted

    def add(self, token: int) -> str:
        """The text that `token` completes ("" while a character is incomplete)."""
        if self._stream is not None:
            return self._stream.step(self._backend, token) or ""
        self.ids.append(token)
        before = self._decode_fn(self.ids[self.prefix : self.read], skip_special_tokens=True)
        text = self._decode_fn(self.ids[self.prefix :], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]
