"""Incremental detokenization: the deltas add up to `decode(all ids)` for a byte-level BPE
tokenizer (Llama 3, Qwen2) and a SentencePiece-style one with byte fallback (Llama 2,
Mistral), through the byte table, the Rust stream and the window fallback, with characters
split over tokens."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

import fastcot.models
from fastcot.engine import detokenizer
from fastcot.engine.detokenizer import IncrementalDetokenizer, byte_table

TEXTS = ["Let me think step by step — the answer is ünïcode 🙂, then 42.", "  leading spaces\nand\n\nnew lines ",
         "日本語のテキスト and ascii"]


def sentencepiece_style() -> Tokenizer:
    vocab = {f"<0x{i:02X}>": i for i in range(256)}
    for ch in ["▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?'0123456789"]:
        vocab[ch] = len(vocab)
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<s>", "</s>"])
    return tok


class SlowTokenizer:
    """Only `decode`: forces the window fallback."""

    def __init__(self, tok):
        self.tok = tok

    def decode(self, ids, skip_special_tokens=True):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def tokenizers():
    byte_level = fastcot.models.load_tokenizer("tiny-random").backend_tokenizer
    return {"byte_level": byte_level, "sentencepiece": sentencepiece_style()}


PATHS = ["auto", "no_table", "window"]


def detokenizer_for(tok, path, monkeypatch, context=()):
    if path == "no_table":
        monkeypatch.setattr(detokenizer, "byte_table", lambda backend: None)
    return IncrementalDetokenizer(SlowTokenizer(tok) if path == "window" else tok, context=context)


def test_byte_table_only_for_byte_level_tokenizers():
    assert byte_table(tokenizers()["byte_level"]) is not None
    assert byte_table(tokenizers()["sentencepiece"]) is None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
def test_deltas_add_up_to_decode(kind, path, monkeypatch):
    tok = tokenizers()[kind]
    rng = random.Random(0)
    special = tok.token_to_id("<s>") if kind == "sentencepiece" else tok.token_to_id("<|begin_of_text|>")
    streams = [tok.encode(t).ids for t in TEXTS]
    # Random text over an alphabet of 1- to 4-byte characters: byte tokens split characters.
    alphabet = "ab ,.\nZé中🙂—"
    streams += [tok.encode("".join(rng.choice(alphabet) for _ in range(80))).ids for _ in range(20)]
    streams.append(streams[0][:5] + [special] + streams[0][5:])  # a special token mid-stream is skipped
    for ids in streams:
        detok = detokenizer_for(tok, path, monkeypatch)
        deltas = [detok.add(t) or "" for t in ids]
        expected = tok.decode(ids, skip_special_tokens=True)
        text = "".join(deltas)
        assert text == expected, (ids, text, expected)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
def test_context_is_not_emitted_again(kind, path, monkeypatch):
    tok = tokenizers()[kind]
    ids = tok.encode(TEXTS[0]).ids
    cuts = [c for c in range(1, len(ids)) if "\ufffd" not in tok.decode(ids[:c])]
    assert len(cuts) > 20
    for cut in cuts:
        detok = detokenizer_for(tok, path, monkeypatch, context=ids[:cut])
        rest = "".join(detok.add(t) or "" for t in ids[cut:])
        assert tok.decode(ids[:cut]) + rest == tok.decode(ids)


@pytest.mark.parametrize("path", ["auto", "window"])
def test_context_ending_inside_a_character(path, monkeypatch):
    # Byte tokens: a context can end inside a character, whose text it never emitted.
    tok = tokenizers()["byte_level"]
    ids = tok.encode(TEXTS[0]).ids
    cuts = [c for c in range(1, len(ids)) if tok.decode(ids[:c]).endswith("\ufffd")]
    assert cuts
    for cut in cuts:
        detok = detokenizer_for(tok, path, monkeypatch, context=ids[:cut])
        rest = "".join(detok.add(t) or "" for t in ids[cut:])
        assert tok.decode(ids[:cut]).rstrip("\ufffd") + rest == tok.decode(ids), cut
