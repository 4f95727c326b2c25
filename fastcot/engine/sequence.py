"""A sequence being generated, and the request outputs handed back to callers."""

from __future__ import annotations

import enum
import itertools
import time
from array import array
from dataclasses import dataclass, field

from fastcot.engine.sampling import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One sample of one request: its token ids (prompt + output), blocks and state.

    Satisfies the block manager's protocol (`seq_id`, `token_ids`, `block_table`).
    `num_computed` counts the tokens whose keys and values are in the cache.
    """

    def __init__(self, request_id: str, index: int, prompt_token_ids: list[int], params: SamplingParams, noise_key: int):
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index
        self.prompt_len = len(prompt_token_ids)
        # An int64 array, not a list: 8 bytes a token, and invisible to the garbage collector,
        # whose full collections would otherwise walk every token of every long sequence.
        self.token_ids = array("q", prompt_token_ids)
        self.block_table: list[int] = []
        self.params = params
        self.noise_key = noise_key
        self.num_computed = 0
        self.num_cached: int | None = None  # prompt tokens found in the prefix cache when first admitted
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.text = ""
        self.reasoning_text = ""
        self.num_reasoning_tokens = 0
        self.num_delimiter_tokens = 0
        # Per output token {token id: Logprob}, and their sum, when params.logprobs is set.
        self.logprobs: list[dict] | None = None if params.logprobs is None else []
        self.cumulative_logprob: float | None = None if params.logprobs is None else 0.0
        self.confidence = None  # PathConfidence, last read (params.confidence_window)
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:].tolist()

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.prompt_len

    def __len__(self) -> int:
        return len(self.token_ids)

    def finish(self, reason: str, stop_reason=None) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
        self.finish_time = time.perf_counter()


@dataclass
class RequestMetrics:
    """Timings of one request, in seconds (perf_counter)."""

    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    time_to_first_token: float | None
    decode_tokens_per_s: float | None


@dataclass(slots=True)
class Logprob:
    """One token's log-probability under the model's raw distribution (before penalties,
    temperature and truncation, as vLLM), its rank there (1 = most likely), and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


_LAZY_FIELDS = ("text", "token_ids", "reasoning_text", "logprobs")


class CompletionOutput:
    """One sample of a request.

    Cumulative fields: `text` and `token_ids` (the whole completion so far), `finish_reason`
    ("stop", "length", "repetition", "abort", or "error" with the message in `stop_reason`;
    None while it runs), `stop_reason` (the stop string or token id that ended it), `logprobs`
    (with `SamplingParams(logprobs=k)`: per output token a `{token id: Logprob}` dict of the
    k most likely tokens and the sampled one), `cumulative_logprob` (the sum of the sampled
    tokens' log-probabilities, when logprobs were asked for), `confidence` (with
    `SamplingParams(confidence_window=W)`: a `fastcot.reasoning.PathConfidence`, set when the
    sample finishes; "low_confidence" is then a finish reason too). For a reasoning model,
    `reasoning_text` is the thinking section and `text` the answer (the delimiters in neither),
    with `num_reasoning_tokens`, `num_delimiter_tokens` and `num_answer_tokens` counting the
    output tokens of each (set when the sample finishes).

    Delta fields, from `LLMEngine.step()`: what this sample added since the request's previous
    output: `delta_text`, `delta_reasoning_text`, `delta_token_ids`, `delta_logprobs`; and
    `finished_this_step`, True in the one output where `finish_reason` first appears. Text a
    stop string could still remove is held back from the deltas (and from the cumulative text
    of a running sample) until it cannot; the deltas of a sample add up to its final fields.

    The cumulative fields of a running sample are computed when first read (building them
    every step would cost time proportional to the length); reading them later still gives
    their value at that step. A finished sample's `token_ids` list is shared by the request's
    later outputs: copy it before modifying it.
    """

    __slots__ = ("index", "_text", "_token_ids", "finish_reason", "stop_reason", "_logprobs", "_reasoning_text",
                 "num_reasoning_tokens", "num_delimiter_tokens", "cumulative_logprob", "delta_text",
                 "delta_reasoning_text", "delta_token_ids", "delta_logprobs", "finished_this_step", "_snapshot",
                 "confidence")

    def __init__(self, index: int, text: str, token_ids: list[int], finish_reason: str | None, stop_reason=None,
                 logprobs: list[dict[int, Logprob]] | None = None, reasoning_text: str = "",
                 num_reasoning_tokens: int = 0, num_delimiter_tokens: int = 0,
                 cumulative_logprob: float | None = None, *, delta_text: str = "", delta_reasoning_text: str = "",
                 delta_token_ids: list[int] | None = None, delta_logprobs: list[dict[int, Logprob]] | None = None,
                 finished_this_step: bool = False, snapshot=None, confidence=None):
        self.index = index
        self.confidence = confidence
        self._text, self._token_ids, self._logprobs, self._reasoning_text = text, token_ids, logprobs, reasoning_text
        self.finish_reason = finish_reason
        self.stop_reason = stop_reason
        self.num_reasoning_tokens = num_reasoning_tokens
        self.num_delimiter_tokens = num_delimiter_tokens
        self.cumulative_logprob = cumulative_logprob
        self.delta_text = delta_text
        self.delta_reasoning_text = delta_reasoning_text
        self.delta_token_ids = [] if delta_token_ids is None else delta_token_ids
        self.delta_logprobs = delta_logprobs
        self.finished_this_step = finished_this_step
        # A callable returning (text, token_ids, reasoning_text, logprobs), run on first read.
        self._snapshot = snapshot

    @classmethod
    def make(cls, index, text, token_ids, finish_reason, stop_reason, logprobs, reasoning_text, num_reasoning_tokens,
             num_delimiter_tokens, cumulative_logprob, delta_text, delta_reasoning_text, delta_token_ids,
             delta_logprobs, finished_this_step, snapshot, confidence=None) -> CompletionOutput:
        """Every field positionally, without the constructor's argument handling (the engine
        builds one per running sample per step)."""
        self = cls.__new__(cls)
        self.index, self._text, self._token_ids, self.finish_reason = index, text, token_ids, finish_reason
        self.stop_reason, self._logprobs, self._reasoning_text = stop_reason, logprobs, reasoning_text
        self.num_reasoning_tokens, self.num_delimiter_tokens = num_reasoning_tokens, num_delimiter_tokens
        self.cumulative_logprob, self.delta_text, self.delta_reasoning_text = cumulative_logprob, delta_text, \
            delta_reasoning_text
        self.delta_token_ids, self.delta_logprobs = delta_token_ids, delta_logprobs
        self.finished_this_step, self._snapshot = finished_this_step, snapshot
        self.confidence = confidence
        return self

    def _resolve(self) -> None:
        self._text, self._token_ids, self._reasoning_text, self._logprobs = self._snapshot()
        self._snapshot = None

    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_answer_tokens(self) -> int:
        """Output tokens outside the thinking section and its delimiters (a final stop or EOS
        token included)."""
        return len(self.token_ids) - self.num_reasoning_tokens - self.num_delimiter_tokens

    def __eq__(self, other):
        if not isinstance(other, CompletionOutput):
            return NotImplemented
        names = [n for n in (*_LAZY_FIELDS, *self.__slots__) if not n.startswith("_")]
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def __repr__(self) -> str:
        return (f"CompletionOutput(index={self.index}, text={self.text!r}, token_ids={self.token_ids}, "
                f"finish_reason={self.finish_reason!r}, stop_reason={self.stop_reason!r}, "
                f"reasoning_text={self.reasoning_text!r}, cumulative_logprob={self.cumulative_logprob})")


def _lazy(slot: str) -> property:
    def get(self):
        if self._snapshot is not None:
            self._resolve()
        return getattr(self, slot)

    def set_(self, value):
        if self._snapshot is not None:
            self._resolve()
        setattr(self, slot, value)

    return property(get, set_, doc=f"cumulative `{slot[1:]}` (see the class docstring)")


for _name in _LAZY_FIELDS:
    setattr(CompletionOutput, _name, _lazy("_" + _name))


@dataclass
class RequestOutput:
    """One request's outputs: from `LLM.generate` when it is done, from `LLMEngine.step()` at
    each step it progressed (`finished` once every sample has). `prompt_token_ids` is the
    request's own list, shared by all its outputs (do not modify it). `metrics` is set on the
    finished output; `prompt_logprobs` (with `SamplingParams(prompt_logprobs=k)`) has one
    entry per prompt token, None for the first. `num_cached_tokens`: prompt tokens found in
    the prefix cache when the request was first scheduled."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    metrics: RequestMetrics | None = None
    finished: bool = True
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    num_cached_tokens: int = 0
