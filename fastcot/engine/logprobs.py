"""Log-probability entries of outputs: `{token id: Logprob}` with ranks and token texts."""

from __future__ import annotations

from fastcot.engine.sequence import Logprob


class LogprobFormatter:
    """Turns the model runner's scores of one position (`(log-probability of the scored token,
    its rank, top ids, top log-probabilities)`) into a `{token id: Logprob}` entry; token texts
    are decoded once per token id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token: int, score: tuple) -> dict[int, Logprob]:
        """`{token id: Logprob}` at one position: `token` (the sampled or prompt token) with its
        rank, then the top entries (ranks 1..k)."""
        lp, rank, top_ids, top_lps = score
        entry = {token: Logprob(lp, rank, self.token_text(token))}
        for r, (t, value) in enumerate(zip(top_ids, top_lps), start=1):
            if t != token:
                entry[t] = Logprob(value, r, self.token_text(t))
        return entry

    def token_text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text
