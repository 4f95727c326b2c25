"""Speculative decoding for the engine's decode steps: n-gram (prompt lookup) and suffix drafts.

At a decode step of a small batch, each eligible sequence proposes draft tokens. `"ngram"`:
up to `k` tokens that followed the latest earlier occurrence of its last n-gram (n from
`prompt_lookup_max` down to `prompt_lookup_min`) in its prompt and output
(`fastcot.reasoning.NgramIndex`). `"suffix"` (SuffixDecoding): the most frequent continuation
of the longest earlier match of its last tokens, in its prompt and output and in a bounded
cache of finished requests' outputs, as long as the match is long and the continuation
frequent (`fastcot.reasoning.SuffixIndex`, `SuffixCache`). One forward pass over
`[last token, drafts...]` through the paged prefill attention scores every draft, and each
position is sampled exactly as plain decoding would sample that output token (same
parameters, penalties over the tokens before it, drafts included, and the same noise
counter). Drafts are accepted while they equal the sampled tokens; the first sampled token
that differs (or the one after the last draft) is kept as well. Sampling and comparing is
distribution-preserving for a draft that is a single proposed token (accepting with
probability p(draft), otherwise drawing from p without it, is what rejection sampling does
for a deterministic proposal), and with the engine's counter-based noise the tokens are the
very ones plain decoding samples: greedy and seeded outputs do not change.

Rows under thinking-budget controls decode one token at a time (a control may replace a
token), and the whole step falls back to plain decoding when the batch is larger than
`max_batch_size`: verifying k + 1 tokens per sequence costs about one decode step only while
a step is bound by reading the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from fastcot.reasoning import NgramIndex
from fastcot.reasoning.suffix import SuffixCache, SuffixIndex

METHODS = ("ngram", "suffix")
_NGRAM_KEYS = ("prompt_lookup_max", "prompt_lookup_min")
_SUFFIX_KEYS = ("suffix_decoding_max_tree_depth", "suffix_decoding_max_spec_factor",
                "suffix_decoding_max_spec_offset", "suffix_decoding_min_token_prob",
                "suffix_decoding_max_cached_tokens")


def cli_config(tokens: int, method: str | None) -> dict | None:
    """`speculative_config` from the command-line flags `--speculative-tokens K` and
    `--speculative-method {ngram,suffix}`: None (off) when neither is given; a method alone uses
    its default K (4 for "ngram", 16 for "suffix"); K alone means "ngram"."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"--speculative-tokens must be an int >= 0, got {tokens!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"--speculative-method must be one of {list(METHODS)}, got {method!r}")
    if not tokens and method is None:
        return None
    config = {"method": method or "ngram"}
    if tokens:
        config["num_speculative_tokens"] = tokens
    return config


@dataclass
class SpeculativeConfig:
    """`LLM(speculative_config={...})`, with vLLM's names: `method` "ngram" or "suffix",
    `num_speculative_tokens` (k, the most draft tokens per step: default 4 for "ngram", 16
    for "suffix", whose drafts adapt their length) and `max_batch_size` (decode batches
    larger than this do not speculate).

    "ngram": `prompt_lookup_max`/`prompt_lookup_min` (n-gram sizes).
    "suffix": `suffix_decoding_max_tree_depth` (the longest context matched and counted, 24),
    `suffix_decoding_max_spec_factor` and `suffix_decoding_max_spec_offset` (a match of m
    tokens drafts at most `floor(m * factor + offset)` tokens; 1.0 and 0.0),
    `suffix_decoding_min_token_prob` (drafting stops where the estimated probability of the
    path falls below it; 0.1) and `suffix_decoding_max_cached_tokens` (the cache of finished
    requests' outputs, least recently used out first; 65536, 0 turns it off).
    """

    method: str = "ngram"
    num_speculative_tokens: int | None = None
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    max_batch_size: int = 8
    suffix_decoding_max_tree_depth: int = 24
    suffix_decoding_max_spec_factor: float = 1.0
    suffix_decoding_max_spec_offset: float = 0.0
    suffix_decoding_min_token_prob: float = 0.1
    suffix_decoding_max_cached_tokens: int = 65536

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"speculative_config method must be one of {list(METHODS)}, got {self.method!r}")
        if self.num_speculative_tokens is None:
            self.num_speculative_tokens = 16 if self.method == "suffix" else 4
        for name, low in (("num_speculative_tokens", 1), ("prompt_lookup_min", 1), ("max_batch_size", 1),
                          ("suffix_decoding_max_tree_depth", 1), ("suffix_decoding_max_cached_tokens", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"speculative_config {name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.prompt_lookup_max, int) or self.prompt_lookup_max < self.prompt_lookup_min:
            raise ValueError(f"speculative_config prompt_lookup_max must be an int >= prompt_lookup_min "
                             f"({self.prompt_lookup_min}), got {self.prompt_lookup_max!r}")
        for name, ok, expected in (("suffix_decoding_max_spec_factor", lambda v: v > 0, "> 0"),
                                   ("suffix_decoding_max_spec_offset", lambda v: True, "a finite number"),
                                   ("suffix_decoding_min_token_prob", lambda v: 0 <= v <= 1, "in [0, 1]")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"speculative_config {name} must be {expected}, got {value!r}")

    @classmethod
    def from_user(cls, spec) -> SpeculativeConfig | None:
        if spec is None or isinstance(spec, cls):
            return spec
        if not isinstance(spec, dict):
            raise TypeError(f"speculative_config must be a dict or None, got {type(spec).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = set(spec) - set(known)
        if unknown:
            raise ValueError(f"speculative_config has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        method = spec.get("method", "ngram")
        other = _SUFFIX_KEYS if method == "ngram" else _NGRAM_KEYS if method == "suffix" else ()
        wrong = sorted(set(spec) & set(other))
        if wrong:
            raise ValueError(f"speculative_config keys {wrong} do not apply to method {method!r}")
        return cls(**spec)


def make_speculator(config: SpeculativeConfig) -> NgramSpeculator | SuffixSpeculator:
    return SuffixSpeculator(config) if config.method == "suffix" else NgramSpeculator(config)


class NgramSpeculator:
    """Drafts for the sequences of a decode batch, and acceptance statistics."""

    def __init__(self, config: SpeculativeConfig):
        self.config = config
        self.indexes: dict = {}  # seq_id -> index over its token ids
        self.num_steps = self.num_proposed = self.num_accepted = 0

    def propose(self, seq, limit: int) -> list[int]:
        """Up to `min(k, limit)` draft tokens for `seq` ([] if none match)."""
        k = min(self.config.num_speculative_tokens, limit)
        if k <= 0:
            return []
        index = self.indexes.get(seq.seq_id)
        if index is None:
            index = self.indexes[seq.seq_id] = NgramIndex(min_n=self.config.prompt_lookup_min,
                                                          max_n=self.config.prompt_lookup_max)
        if len(index) > len(seq.token_ids):  # tokens were taken back (a recompute after preemption)
            index.rollback(len(index) - len(seq.token_ids))
        index.extend(seq.token_ids[len(index):])  # the tokens since its last proposal
        return index.propose(k)

    def forget(self, seq) -> None:
        self.indexes.pop(seq.seq_id, None)

    def accept(self, drafts: list[int], sampled: list[int]) -> list[int]:
        """The tokens a sequence emits: its drafts while each equals the token sampled at its
        position, then the first sampled token that differs (or the one after the last draft).
        `sampled` has `len(drafts) + 1` entries."""
        n = 0
        while n < len(drafts) and drafts[n] == sampled[n]:
            n += 1
        self.num_proposed += len(drafts)
        self.num_accepted += n
        return drafts[:n] + [sampled[n]]

    @property
    def acceptance_rate(self) -> float | None:
        return self.num_accepted / self.num_proposed if self.num_proposed else None


class SuffixSpeculator(NgramSpeculator):
    """Suffix decoding: a `SuffixIndex` per running sequence (freed when it finishes) and one
    `SuffixCache` of finished sequences' outputs, shared by all requests."""

    def __init__(self, config: SpeculativeConfig):
        super().__init__(config)
        self.cache = SuffixCache(config.suffix_decoding_max_cached_tokens,
                                 max_depth=config.suffix_decoding_max_tree_depth)

    def propose(self, seq, limit: int) -> list[int]:
        c = self.config
        k = min(c.num_speculative_tokens, limit)
        if k <= 0:
            return []
        index = self.indexes.get(seq.seq_id)
        if index is None or len(index) > len(seq.token_ids):  # new, or tokens taken back: start over
            index = self.indexes[seq.seq_id] = SuffixIndex(max_depth=c.suffix_decoding_max_tree_depth)
        cache = self.cache if c.suffix_decoding_max_cached_tokens else None
        index.extend(seq.token_ids[len(index):], cache)  # the tokens since its last proposal
        return index.propose(k, max_spec_factor=c.suffix_decoding_max_spec_factor,
                             max_spec_offset=c.suffix_decoding_max_spec_offset,
                             min_token_prob=c.suffix_decoding_min_token_prob, cache=cache).tokens

    def forget(self, seq) -> None:
        """Free the sequence's index; a finished output goes into the cache."""
        self.indexes.pop(seq.seq_id, None)
        if seq.finish_reason not in (None, "error") and seq.num_output:
            self.cache.add(seq.token_ids[seq.prompt_len:])
