"""N-gram (prompt-lookup) speculative decoding for the engine's decode steps.

At a decode step of a small batch, each eligible sequence proposes up to `k` draft tokens:
the tokens that followed the latest earlier occurrence of its last n-gram (n from
`prompt_lookup_max` down to `prompt_lookup_min`) in its prompt and output
(`fastcot.reasoning.NgramIndex`). One forward pass over `[last token, drafts...]` through the
paged prefill attention scores every draft, and each position is sampled exactly as plain
decoding would sample that output token (same parameters, same noise counter). Drafts are
accepted while they equal the sampled tokens; the first sampled token that differs (or the
one after the last draft) is kept as well. Sampling and comparing is distribution-preserving
for a draft that is a single proposed token (accepting with probability p(draft), otherwise
drawing from p without it, is what rejection sampling does for a deterministic proposal), and
with the engine's counter-based noise the tokens are the very ones plain decoding samples:
greedy and seeded outputs do not change.

Rows with a repetition penalty, thinking-budget controls or logprobs requests decode one token
at a time (their next distribution depends on each accepted token), and the whole step falls
back to plain decoding when the batch is larger than `max_batch_size`: verifying k + 1 tokens
per sequence costs about one decode step only while a step is bound by reading the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastcot.reasoning import NgramIndex


@dataclass
class SpeculativeConfig:
    """`LLM(speculative_config={...})`, with vLLM's names: `method` "ngram",
    `num_speculative_tokens` (k), `prompt_lookup_max`/`prompt_lookup_min` (n-gram sizes) and
    `max_batch_size` (decode batches larger than this do not speculate)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    max_batch_size: int = 8

    def __post_init__(self):
        if self.method != "ngram":
            raise ValueError(f"speculative_config method must be 'ngram', got {self.method!r}")
        for name, low in (("num_speculative_tokens", 1), ("prompt_lookup_min", 1), ("max_batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"speculative_config {name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.prompt_lookup_max, int) or self.prompt_lookup_max < self.prompt_lookup_min:
            raise ValueError(f"speculative_config prompt_lookup_max must be an int >= prompt_lookup_min "
                             f"({self.prompt_lookup_min}), got {self.prompt_lookup_max!r}")

    @classmethod
    def from_user(cls, spec) -> SpeculativeConfig | None:
        if spec is None or isinstance(spec, cls):
            return spec
        if not isinstance(spec, dict):
            raise TypeError(f"speculative_config must be a dict or None, got {type(spec).__name__}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"speculative_config has unknown keys {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**spec)


class NgramSpeculator:
    """Drafts for the sequences of a decode batch, and acceptance statistics."""

    def __init__(self, config: SpeculativeConfig):
        self.config = config
        self.indexes: dict[int, NgramIndex] = {}  # seq_id -> index over its token ids
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
