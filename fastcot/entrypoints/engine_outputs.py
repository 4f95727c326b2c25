"""Turn the engine's per-step `RequestOutput`s into the server's immutable `Update`s.

Runs on the engine thread. The engine's outputs carry, per sample, what it added since the
request's previous output (`delta_text`, `delta_reasoning_text`, `delta_token_ids`,
`delta_logprobs`, `finished_this_step`; see docs/engine.md). A sample that made no progress
in a step (another sample of the request did, or it finished earlier) is left out, so each
finish reaches the client once. Reasoning tokens per step are the difference of the sample's
running `num_reasoning_tokens`. Log-probabilities become `(token text, logprob, ranked)`: `ranked` is every entry the
engine gave, most likely first (the k asked for, then the sampled token if it was not among
them; the server keeps the first k), token texts decoded once per token id and cached. A
token forced by a thinking budget (the end delimiter, the answer lead-in, "Wait") was not
sampled: it is reported with `FORCED_LOGPROB` next to the table of the token it replaced.
"""

from __future__ import annotations

from fastcot.entrypoints.async_engine import SampleDelta, Update

# The logprob reported for a token the model did not sample (the thinking budget forced it; the
# engine keeps the table of the token it replaced), and the floor of every logprob, as vLLM
# clamps -inf: JSON has no infinities.
FORCED_LOGPROB = -9999.0


class OutputReader:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._token_text: dict[int, str] = {}
        self._reasoning_seen: dict[tuple[str, int], int] = {}  # (request id, sample) -> thinking tokens sent

    def __call__(self, output) -> Update:
        samples = []
        for o in output.outputs:
            if not (o.delta_text or o.delta_reasoning_text or o.delta_token_ids or o.finished_this_step):
                continue
            key = (output.request_id, o.index)
            seen = self._reasoning_seen.get(key, 0)
            reasoning_tokens = o.num_reasoning_tokens - seen
            self._reasoning_seen[key] = o.num_reasoning_tokens
            finish = o.finish_reason if o.finished_this_step else None
            samples.append(SampleDelta(
                index=o.index, text=o.delta_text or "", reasoning=o.delta_reasoning_text or "",
                num_tokens=len(o.delta_token_ids or ()), num_reasoning_tokens=reasoning_tokens,
                logprobs=self._logprobs(o.delta_token_ids, o.delta_logprobs), finish_reason=finish,
                stop_reason=o.stop_reason if finish else None,
            ))
        if output.finished:
            for o in output.outputs:
                self._reasoning_seen.pop((output.request_id, o.index), None)
        return Update(tuple(samples), output.finished, len(output.prompt_token_ids),
                      getattr(output, "num_cached_tokens", 0) or 0)

    def forget(self, request_id: str) -> None:
        """Drop the state of a request that ended without a finished output (aborted)."""
        for key in [k for k in self._reasoning_seen if k[0] == request_id]:
            del self._reasoning_seen[key]

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def _logprobs(self, token_ids, entries) -> tuple | None:
        if entries is None:
            return None
        out = []
        for token, table in zip(token_ids, entries):
            chosen = table.get(token)
            ranked = sorted(table.items(), key=lambda item: (item[1].rank is None, item[1].rank or 0))
            text = self.token_text(token) if chosen is None else self._text(token, chosen)
            logprob = FORCED_LOGPROB if chosen is None else max(chosen.logprob, FORCED_LOGPROB)
            out.append((text, logprob, tuple((self._text(t, lp), max(lp.logprob, FORCED_LOGPROB)) for t, lp in ranked)))
        return tuple(out)

    def _text(self, token_id: int, logprob) -> str:
        decoded = getattr(logprob, "decoded_token", None)
        return decoded if decoded is not None else self.token_text(token_id)
