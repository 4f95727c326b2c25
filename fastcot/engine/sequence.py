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
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.text = ""
        self.reasoning_text = ""
        self.num_reasoning_tokens = 0
        self.num_delimiter_tokens = 0
        # Per output token {token id: log-probability}, when params.logprobs is set.
        self.logprobs: list[dict[int, float]] | None = None if params.logprobs is None else []
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


@dataclass
class CompletionOutput:
    """One sample: its generated token ids and text, and why it stopped ("stop", "length",
    "repetition", or "error" with the message in `stop_reason`). For a reasoning model,
    `reasoning_text` is the thinking section and `text` the answer (the delimiters in neither),
    with `num_reasoning_tokens`, `num_delimiter_tokens` and `num_answer_tokens` counting the
    output tokens of each. With `SamplingParams(logprobs=k)`,
    `logprobs[i]` maps token ids to log-probabilities (under the model's raw distribution) for
    output token i: the `k` most likely tokens and the sampled one."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[dict[int, float]] | None = None
    reasoning_text: str = ""
    num_reasoning_tokens: int = 0
    num_delimiter_tokens: int = 0

    @property
    def num_answer_tokens(self) -> int:
        """Output tokens outside the thinking section and its delimiters (a final stop or EOS
        token included)."""
        return len(self.token_ids) - self.num_reasoning_tokens - self.num_delimiter_tokens


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    metrics: RequestMetrics | None = None
    finished: bool = True
