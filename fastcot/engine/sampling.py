"""Sampling parameters and a batched on-device sampler.

`SamplingParams` is the user-facing request option set (DESIGN.md §3, vLLM's names).
`SamplingTensors.from_params` packs the parameters of one batch into a few tensors on the
host, once per step; `Sampler` turns `[B, V]` logits into `[B]` token ids without ever
reading a device value back, with no Python loop over rows and no data-dependent shape, so a
decode step including sampling can be captured in a CUDA graph (or `torch.compile`d).

Processing order per row (HF `generate` and vLLM agree on it): repetition penalty, presence
and frequency penalties, then suppression of EOS/stop ids while under `min_tokens`, then
greedy argmax for temperature-0 rows; for the others temperature, top-k, top-p, min-p, then
one draw.

Seeded draws are Gumbel-max over noise from a counter-based hash of (row key, step, token id)
in 32-bit integer arithmetic; see `gumbel_noise`.
"""

from __future__ import annotations

import array
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastcot.reasoning.thinking import REASONING_EFFORT_BUDGETS, effort_budget

OUTPUT_KINDS = ("cumulative", "delta", "final_only")
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
# Below this temperature a row is greedy: logits / T would overflow or turn into NaN.
_GREEDY_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    """How to sample the completion of one request (vLLM-compatible names and defaults).

    `temperature=0` (or below 1e-5) is greedy. `top_k=0` (or -1), `top_p=1`, `min_p=0` and the
    penalties at their defaults are off. `repetition_penalty` (HF's, over prompt and output:
    a present token's positive logit is divided by it, a negative one multiplied);
    `presence_penalty` and `frequency_penalty` (OpenAI's, in [-2, 2], over output tokens: a
    token's logit is lowered by `presence_penalty` if it occurs in the output and by
    `frequency_penalty` times its count there).
    `max_tokens`: most output tokens (None: up to the engine's `max_model_len`).
    `stop` (strings) and `stop_token_ids` end a completion; neither ends it before `min_tokens`
    tokens, during which EOS (unless `ignore_eos`) and `stop_token_ids` cannot be sampled. The
    stop string is not in the text unless `include_stop_str_in_output`.
    `skip_special_tokens`: leave special tokens' text out of the output text.
    `seed` makes this request's samples reproducible whatever batch it runs in.
    `logprobs`: how many top log-probabilities to return per output token (None: none; the
    sampled token's is always included); `prompt_logprobs`: the same for each prompt token
    (a request asking for them does not use the prefix cache). Both are bounded by the
    engine's `max_logprobs` (default 20).
    `output_kind` (what `LLMEngine.step()` returns for this request): "cumulative" (default:
    an output at every step it progresses, whole texts and deltas), "delta" (at every step,
    `text`/`token_ids` hold only the new part) or "final_only" (one output when it finishes;
    `LLM.generate` uses it).

    Reasoning models (thinking delimiters known to the engine, see `fastcot.LLM`):
    `thinking_budget=N` caps the thinking section at N tokens: the token after the N-th is
    replaced by the end-of-thinking delimiter, followed by the tokens of `answer_lead_in`.
    `min_thinking_tokens=M`: while fewer than M thinking tokens have been generated, an
    end-of-thinking delimiter the model samples is replaced by the tokens of
    `thinking_continuation` (s1's budget forcing). Both count within `max_tokens`.
    `reasoning_effort` ("low", "medium" or "high") sets the thinking budget to 1024, 2048 or
    8192 tokens (`fastcot.reasoning.REASONING_EFFORT_BUDGETS`, lowered to `max_tokens`) with the
    same `answer_lead_in`; an explicit `thinking_budget` takes precedence over it
    (`effective_thinking_budget` is the one that applies).
    `repetition_guard=True` ends a completion whose tail has become a degenerate loop (the
    same span repeated back to back; `fastcot.reasoning.RepetitionGuard`'s defaults) with
    `finish_reason="repetition"`.

    Path confidence (`fastcot.reasoning.confidence`, DeepConf): `confidence_window=W` makes
    the engine score every output token on the device (minus the mean log-probability of the
    `confidence_top_k` most likely tokens of the raw distribution) and keep each sample's
    group confidence (the mean of its last W token confidences) and its lowest value over
    full windows, read by the host every `confidence_interval` decode steps and when the
    sample ends (`CompletionOutput.confidence`). With `confidence_threshold=s` as well, a
    sample whose group confidence over a full window falls below s ends at the next read with
    `finish_reason="low_confidence"` (its blocks freed). Such rows decode without speculation.
    Invalid values raise ValueError naming the field.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    thinking_budget: int | None = None
    min_thinking_tokens: int = 0
    answer_lead_in: str = "\n\n"
    thinking_continuation: str = "\nWait"
    repetition_guard: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = None
    output_kind: str = "cumulative"
    reasoning_effort: str | None = None
    confidence_window: int | None = None
    confidence_top_k: int = 20
    confidence_threshold: float | None = None
    confidence_interval: int = 8

    def __post_init__(self):
        _check_int("n", self.n, low=1)
        self.temperature = _check_float("temperature", self.temperature, ">= 0", lambda v: v >= 0)
        self.top_p = _check_float("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _check_int("top_k", self.top_k, low=-1, hint=" (0 or -1 disable top-k)")
        self.min_p = _check_float("min_p", self.min_p, "in [0, 1]", lambda v: 0 <= v <= 1)
        self.repetition_penalty = _check_float("repetition_penalty", self.repetition_penalty, "> 0", lambda v: v > 0)
        for name in ("presence_penalty", "frequency_penalty"):
            setattr(self, name, _check_float(name, getattr(self, name), "in [-2, 2]", lambda v: -2 <= v <= 2))
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1, hint=" (or None: up to max_model_len)")
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"SamplingParams.min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
                raise ValueError(f"SamplingParams.stop must be a non-empty string or a list of them, got {self.stop!r}")
            self.stop = list(self.stop)
        if self.stop_token_ids is not None:
            ids = self.stop_token_ids
            if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
                raise ValueError(f"SamplingParams.stop_token_ids must be a list of token ids >= 0, got {ids!r}")
            self.stop_token_ids = list(ids)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"SamplingParams.ignore_eos must be a bool, got {self.ignore_eos!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"SamplingParams.seed must be an int or None, got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=0)
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"SamplingParams.output_kind must be one of {list(OUTPUT_KINDS)}, "
                             f"got {self.output_kind!r}")
        if self.thinking_budget is not None:
            _check_int("thinking_budget", self.thinking_budget, low=0)
            if self.max_tokens is not None and self.thinking_budget > self.max_tokens:
                raise ValueError(f"SamplingParams.thinking_budget must be <= max_tokens ({self.max_tokens}), "
                                 f"got {self.thinking_budget}")
        if self.reasoning_effort is not None and (not isinstance(self.reasoning_effort, str)
                                                 or self.reasoning_effort not in REASONING_EFFORT_BUDGETS):
            raise ValueError(f"SamplingParams.reasoning_effort must be one of {list(REASONING_EFFORT_BUDGETS)} "
                             f"or None, got {self.reasoning_effort!r}")
        _check_int("min_thinking_tokens", self.min_thinking_tokens, low=0)
        budget = self.effective_thinking_budget
        limit = self.max_tokens if budget is None else budget
        if limit is not None and self.min_thinking_tokens > limit:
            what = "max_tokens" if budget is None else \
                "thinking_budget" if self.thinking_budget is not None else f"the {self.reasoning_effort} effort budget"
            raise ValueError(f"SamplingParams.min_thinking_tokens must be <= {what} ({limit}), "
                             f"got {self.min_thinking_tokens}")
        self._check_confidence()
        for name in ("answer_lead_in", "thinking_continuation"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"SamplingParams.{name} must be a str, got {getattr(self, name)!r}")
        if not self.thinking_continuation and self.min_thinking_tokens:
            raise ValueError("SamplingParams.thinking_continuation must not be empty when min_thinking_tokens > 0")
        for name in ("repetition_guard", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SamplingParams.{name} must be a bool, got {getattr(self, name)!r}")

    def _check_confidence(self) -> None:
        if self.confidence_window is not None:
            _check_int("confidence_window", self.confidence_window, low=1, hint=" (or None: off)")
        _check_int("confidence_top_k", self.confidence_top_k, low=1)
        _check_int("confidence_interval", self.confidence_interval, low=1)
        if self.confidence_threshold is not None:
            self.confidence_threshold = _check_float("confidence_threshold", self.confidence_threshold,
                                                     "a finite number or None", lambda v: True)
            if self.confidence_window is None:
                raise ValueError("SamplingParams.confidence_threshold needs confidence_window (the group size)")

    @property
    def effective_thinking_budget(self) -> int | None:
        """The thinking budget that applies: `thinking_budget` if given, else the budget of
        `reasoning_effort` (at most `max_tokens`), else None."""
        if self.thinking_budget is not None or self.reasoning_effort is None:
            return self.thinking_budget
        return effort_budget(self.reasoning_effort, self.max_tokens)

    @property
    def tracks_confidence(self) -> bool:
        return self.confidence_window is not None

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_TEMPERATURE

    @property
    def output_penalties(self) -> bool:
        """Whether presence or frequency penalties apply (they need each row's output counts)."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name, value, *, low, hint=""):
    if not _is_int(value) or value < low:
        raise ValueError(f"SamplingParams.{name} must be an int >= {low}{hint}, got {value!r}")


def _check_float(name, value, expected, ok) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"SamplingParams.{name} must be {expected}, got {value!r}")
    return float(value)


def request_key(seed: int, sample_index: int = 0) -> int:
    """The 32-bit noise key of sample `sample_index` of a request whose seed is `seed`.

    Computed once per sequence when it is admitted (host side), with `seed = params.seed`, or
    for an unseeded request a seed the engine draws from its own seeded RNG, so that a whole
    run repeats under `LLM(seed=...)`. SplitMix64 over the two integers: nearby seeds and the
    `n` samples of one request get unrelated noise streams."""
    x = (seed ^ (sample_index * 0x9E3779B97F4A7C15)) & _MASK64
    for _ in range(2):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x & _MASK32


@dataclass
class SamplingTensors:
    """Per-row sampling parameters of one batch, as tensors on the sampling device.

    Attributes (B rows):
        temperature: `[B]` float32; 0 (below 1e-5) means greedy.
        top_k: `[B]` int64; 0 means off.
        top_p: `[B]` float32; 1 means off.
        min_p: `[B]` float32; 0 means off.
        repetition_penalty: `[B]` float32; 1 means off.
        presence_penalty, frequency_penalty: `[B]` float32; 0 means off.
        keys: `[B]` int64 in [0, 2^32): the row's noise key (`request_key`).
        steps: `[B]` int64: output tokens the row's sequence has generated before this draw;
            with `keys` it fixes the noise, so a seeded sample does not depend on its batch.
        suppress_ids: `[B, S]` int64 token ids that cannot be sampled this step, padded with -1
            (EOS and stop ids under `min_tokens`); None when no row suppresses anything.
    The flags below are host booleans fixed at packing time, so the sampler skips unused
    stages without reading the device.

    While the rows of a batch stay the same, the tensors can serve the next step after
    `advance_()`, provided `suppress_ids` is None (suppression depends on each row's length).
    """

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    presence_penalty: torch.Tensor
    frequency_penalty: torch.Tensor
    keys: torch.Tensor
    steps: torch.Tensor
    suppress_ids: torch.Tensor | None = None
    all_greedy: bool = False
    any_greedy: bool = True
    max_top_k: int = 0
    do_top_p: bool = True
    do_min_p: bool = True
    do_penalty: bool = True
    do_output_penalty: bool = False

    @property
    def batch_size(self) -> int:
        return self.temperature.shape[0]

    def advance_(self) -> SamplingTensors:
        """Move every row on by one generated token, in place on the device."""
        self.steps.add_(1)
        return self

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        *,
        output_lens: Sequence[int],
        keys: Sequence[int] | None = None,
        eos_token_ids: Sequence[int] = (),
        extra_suppress_ids: Sequence[Sequence[int]] | None = None,
        device: torch.device | str = "cpu",
    ) -> SamplingTensors:
        """Pack one row per entry of `params` (host work, then three small copies to `device`).

        Args:
            params: the rows' request parameters (the `n` samples of a request are `n` rows).
            output_lens: tokens each row has generated so far (0 for the first draw after prefill).
            keys: each row's `request_key(seed, sample_index)`, kept on its sequence. Without
                them every row gets a fresh random key, so nothing is reproducible.
            eos_token_ids: the model's EOS ids, suppressed under `min_tokens` unless `ignore_eos`.
            extra_suppress_ids: per-row ids to suppress this step as well (e.g. an end-of-thinking
                id under a minimum thinking length).
        """
        B = len(params)
        for name, value in dict(output_lens=output_lens, keys=keys, extra_suppress_ids=extra_suppress_ids).items():
            if value is not None and len(value) != B:
                raise ValueError(f"{name} has {len(value)} entries, expected one per row ({B})")
        if keys is None:
            keys = [random.getrandbits(32) for _ in range(B)]
        temps = [p.temperature for p in params]
        tops_p = [p.top_p for p in params]
        mins_p = [p.min_p for p in params]
        penalties = [p.repetition_penalty for p in params]
        presence = [p.presence_penalty for p in params]
        frequency = [p.frequency_penalty for p in params]
        tops_k = [max(p.top_k, 0) for p in params]  # -1 is off too
        suppress = [[] for _ in range(B)] if extra_suppress_ids is None else [list(s) for s in extra_suppress_ids]
        for row, (p, n) in enumerate(zip(params, output_lens)):
            if n < p.min_tokens:
                suppress[row] += (p.stop_token_ids or []) + ([] if p.ignore_eos else list(eos_token_ids))

        # array + frombuffer packs a list about 3x faster than torch.tensor(list) (host budget).
        floats = pack("f", temps + tops_p + mins_p + penalties + presence + frequency, torch.float32,
                      device).view(6, B)
        ints = pack("q", tops_k + list(keys) + list(output_lens), torch.int64, device).view(3, B)
        width = max(map(len, suppress), default=0)
        suppress_ids = None
        if width:
            flat = [i for s in suppress for i in s + [-1] * (width - len(s))]
            suppress_ids = pack("q", flat, torch.int64, device).view(B, width)
        num_greedy = sum(t < _GREEDY_TEMPERATURE for t in temps)
        return cls(
            temperature=floats[0], top_p=floats[1], min_p=floats[2], repetition_penalty=floats[3],
            presence_penalty=floats[4], frequency_penalty=floats[5],
            top_k=ints[0], keys=ints[1], steps=ints[2], suppress_ids=suppress_ids,
            all_greedy=num_greedy == B,
            any_greedy=num_greedy > 0,
            max_top_k=max(tops_k, default=0),
            do_top_p=min(tops_p, default=1.0) < 1.0,
            do_min_p=max(mins_p, default=0.0) > 0.0,
            do_penalty=penalties.count(1.0) != B,
            do_output_penalty=presence.count(0.0) != B or frequency.count(0.0) != B,
        )


def pack(typecode: str, values: list, dtype: torch.dtype, device) -> torch.Tensor:
    """A 1-D tensor of `values` on `device` (`typecode` "f", "i" or "q" as in `array`), packed
    on the host through `array`, about 3x faster than `torch.tensor(list)`."""
    if not values:
        return torch.empty(0, dtype=dtype, device=device)
    host = torch.frombuffer(array.array(typecode, values), dtype=dtype)
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)  # on the CPU it shares the array's memory, which it keeps alive


# ---- device-side stages: pure tensor ops, no host sync, shapes fixed by the inputs ----------


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """An avalanching 32-bit hash (lowbias32's shape) of int64 values in [0, 2^32).

    Multipliers stay below 2^31 so every product fits in int64: exact and overflow-free on
    every backend (signed overflow is undefined behaviour in the C++ and CUDA kernels)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, steps: torch.Tensor, vocab_hash: torch.Tensor) -> torch.Tensor:
    """`[B, V]` float32 standard Gumbel noise, a pure function of (key, step, token id).

    Counter-based (no generator state): row b's noise depends only on `keys[b]`, `steps[b]` and
    the token index, so a seeded request draws the same tokens in any batch, at any row, after
    a preemption, and inside a CUDA graph. A `torch.Generator` per row would need a Python loop
    and a launch per row. `vocab_hash` is `_mix32` of the token indices (cached by `Sampler`).
    """
    row = _mix32(keys ^ _mix32((steps + 0x632BE5AB) & _MASK32))
    h = _mix32(row.unsqueeze(1) ^ vocab_hash.unsqueeze(0))
    # 23 random bits: (k + 0.5) / 2^23 is exact in float32 and lies strictly inside (0, 1).
    u = ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))
    return -torch.log(-torch.log(u))


def apply_repetition_penalty(logits: torch.Tensor, presence: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """HF's repetition penalty: for every token present in the row's prompt or output, a positive
    logit is divided by the penalty and a negative one multiplied by it.

    `presence` `[B, V]` bool (see `presence_mask`), `penalty` `[B]`."""
    p = penalty.unsqueeze(1)
    return torch.where(presence, torch.where(logits < 0, logits * p, logits / p), logits)


def apply_output_penalties(logits: torch.Tensor, output_counts: torch.Tensor, presence_penalty: torch.Tensor,
                           frequency_penalty: torch.Tensor) -> torch.Tensor:
    """OpenAI's presence and frequency penalties: `logits[b, v] - frequency_penalty[b] *
    count[b, v] - presence_penalty[b] * (count[b, v] > 0)`, where `output_counts` `[B, V]`
    counts token v among row b's output tokens (see `output_counts`)."""
    counts = output_counts.to(logits.dtype)
    present = (output_counts > 0).to(logits.dtype)
    return logits - frequency_penalty.unsqueeze(1) * counts - presence_penalty.unsqueeze(1) * present


def suppress_tokens(logits: torch.Tensor, suppress_ids: torch.Tensor) -> torch.Tensor:
    """Set `logits[b, suppress_ids[b, j]]` to -inf; entries of -1 are padding."""
    # amin with +inf at padding leaves those logits alone, whatever index the clamp gives them,
    # and stays deterministic when a real id and padding land on the same column.
    fill = torch.where(suppress_ids >= 0, float("-inf"), float("inf")).to(logits.dtype)
    return logits.scatter_reduce(1, suppress_ids.clamp(min=0), fill, reduce="amin", include_self=True)


def truncate(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """Top-k, then top-p, then min-p (HF's warper order) on temperature-scaled logits: tokens
    outside a row's kept set become -inf. Ties with the k-th / cut-off logit are kept.

    Top-p keeps the smallest prefix of the descending order whose mass reaches `top_p`
    (a token is kept when the mass strictly before it is below `top_p`), measured on the
    distribution left after top-k. Min-p keeps tokens with probability >= min_p * max."""
    V = logits.shape[1]
    neg_inf = float("-inf")
    if t.do_top_p or t.max_top_k > 0:
        if t.do_top_p or t.max_top_k >= V // 2:
            top = logits.sort(dim=1, descending=True).values
        else:
            top = logits.topk(t.max_top_k, dim=1).values  # sorted, enough for every row's k
        if t.max_top_k > 0:
            k = t.top_k.clamp(min=1, max=top.shape[1]).unsqueeze(1)
            kth = torch.where(t.top_k.unsqueeze(1) > 0, top.gather(1, k - 1), neg_inf)
            logits = logits.masked_fill(logits < kth, neg_inf)
            if t.do_top_p:
                top = top.masked_fill(top < kth, neg_inf)
        if t.do_top_p:
            probs = top.softmax(dim=1)
            mass_before = probs.cumsum(dim=1) - probs
            # top_p == 1 keeps everything outright: rounding can lift the mass before a very
            # unlikely token to 1.0, and a row's draw must not depend on its neighbours' options.
            keep = (mass_before < t.top_p.unsqueeze(1)) | (t.top_p.unsqueeze(1) >= 1.0)
            num_kept = keep.sum(dim=1, keepdim=True).clamp(min=1)
            cutoff = top.gather(1, num_kept - 1)
            logits = logits.masked_fill(logits < cutoff, neg_inf)
    if t.do_min_p:
        probs = logits.softmax(dim=1)
        threshold = probs.amax(dim=1, keepdim=True) * t.min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, neg_inf)
    return logits


class Sampler:
    """Batched sampling on the logits' device, free of host synchronization.

    `sampler(logits, tensors, presence=None) -> [B]` int64 token ids, for `logits` `[B, V]`
    float32 and `tensors` from `SamplingTensors.from_params`. The inputs are not modified.

    `presence` `[B, V]` bool marks the tokens of each row's prompt and output so far; it is
    needed only when `tensors.do_penalty`. `output_counts` `[B, V]` int32 counts each row's
    output tokens, needed only when `tensors.do_output_penalty` (presence and frequency
    penalties); it is kept and updated the same way (`count_tokens_`). It is a mask rather than a padded list of token
    ids because its cost per step is fixed: a 100k-token chain of thought would make the
    padded list (and its host-to-device copy) grow every step, while the mask is built once
    per sequence (`presence_mask`) and updated in place with each sampled token
    (`record_tokens_`), on the device.

    Example:
        >>> params = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_p=0.9, seed=1)]
        >>> t = SamplingTensors.from_params(params, output_lens=[0, 0])
        >>> Sampler()(torch.randn(2, 100), t).shape
        torch.Size([2])
    """

    def __init__(self):
        self._vocab_hash: dict[tuple[int, torch.device], torch.Tensor] = {}

    def vocab_hash(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """`[V]` int64 hashed token indices, made once per (V, device): call it once before a
        CUDA graph capture so the capture allocates nothing new."""
        key = (vocab_size, torch.device(device))
        if key not in self._vocab_hash:
            idx = torch.arange(vocab_size, dtype=torch.int64, device=device)
            self._vocab_hash[key] = _mix32((idx + 0x2545F491) & _MASK32)
        return self._vocab_hash[key]

    def __call__(self, logits: torch.Tensor, t: SamplingTensors, presence: torch.Tensor | None = None,
                 output_counts: torch.Tensor | None = None) -> torch.Tensor:
        if logits.dim() != 2 or logits.dtype != torch.float32:
            raise ValueError(f"logits must be [B, V] float32, got {list(logits.shape)} {logits.dtype}")
        if logits.shape[0] != t.batch_size:
            raise ValueError(f"logits has {logits.shape[0]} rows, sampling tensors have {t.batch_size}")
        if t.do_penalty:
            if presence is None or presence.shape != logits.shape or presence.dtype != torch.bool:
                got = None if presence is None else f"{list(presence.shape)} {presence.dtype}"
                raise ValueError(f"presence must be a [B, V] bool mask when a row has a repetition penalty, got {got}")
            logits = apply_repetition_penalty(logits, presence, t.repetition_penalty)
        if t.do_output_penalty:
            if output_counts is None or output_counts.shape != logits.shape:
                got = None if output_counts is None else list(output_counts.shape)
                raise ValueError(f"output_counts must be a [B, V] count tensor when a row has a presence or "
                                 f"frequency penalty, got {got}")
            logits = apply_output_penalties(logits, output_counts, t.presence_penalty, t.frequency_penalty)
        if t.suppress_ids is not None:
            logits = suppress_tokens(logits, t.suppress_ids)
        if t.all_greedy:
            return logits.argmax(dim=1)
        greedy = t.temperature < _GREEDY_TEMPERATURE
        temperature = torch.where(greedy, 1.0, t.temperature).unsqueeze(1)
        scaled = truncate(logits / temperature, t)
        noise = gumbel_noise(t.keys, t.steps, self.vocab_hash(logits.shape[1], logits.device))
        sampled = (scaled + noise).argmax(dim=1)
        if t.any_greedy:
            sampled = torch.where(greedy, logits.argmax(dim=1), sampled)
        return sampled


def presence_mask(token_ids: Sequence[Sequence[int]], vocab_size: int, device="cpu") -> torch.Tensor:
    """`[B, V]` bool: True where token v occurs in row b's token ids (prompt + output)."""
    mask = torch.zeros(len(token_ids), vocab_size, dtype=torch.bool)
    for row, ids in enumerate(token_ids):
        if len(ids):
            mask[row, torch.as_tensor(ids, dtype=torch.int64)] = True
    return mask.to(device)


def output_counts(token_ids: Sequence[Sequence[int]], vocab_size: int, device="cpu") -> torch.Tensor:
    """`[B, V]` int32: how often token v occurs in row b's output token ids."""
    counts = torch.zeros(len(token_ids), vocab_size, dtype=torch.int32)
    for row, ids in enumerate(token_ids):
        if len(ids):
            counts[row] = torch.bincount(torch.as_tensor(ids, dtype=torch.int64), minlength=vocab_size).to(torch.int32)
    return counts.to(device)


def count_tokens_(counts: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Add this step's sampled `token_ids` `[B]` to `counts` `[B, V]`, in place on the device."""
    return counts.scatter_add_(1, token_ids.unsqueeze(1), torch.ones_like(token_ids, dtype=counts.dtype).unsqueeze(1))


def record_tokens_(presence: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Mark this step's sampled `token_ids` `[B]` in `presence` `[B, V]`, in place on the device."""
    return presence.scatter_(1, token_ids.unsqueeze(1), True)


def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int = 0, *, ranks: bool = False):
    """Log-probabilities under the raw model distribution (before any processing, as vLLM).

    Returns `(token_logprobs [B], top_ids [B, num_top], top_logprobs [B, num_top])`; with
    `ranks`, `(token_logprobs, token_ranks [B], top_ids, top_logprobs)`, where a token's rank
    is 1 + the number of tokens strictly more likely."""
    logprobs = logits.log_softmax(dim=1)
    token_logprobs = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
    top_logprobs, top_ids = logprobs.topk(num_top, dim=1)
    if not ranks:
        return token_logprobs, top_ids, top_logprobs
    token_ranks = (logprobs > token_logprobs.unsqueeze(1)).sum(dim=1) + 1
    return token_logprobs, token_ranks, top_ids, top_logprobs


def token_confidence(logits: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """`[B]` float32 token confidences (DeepConf): minus the mean log-probability of row b's
    `top_k[b]` most likely tokens under the raw distribution of `logits` `[B, V]`.

    `max_k` (a host int, >= every `top_k[b]`, <= V) fixes the shape, so nothing is read back
    from the device: the sampler's step runs it next to the draw, graph-safe."""
    logprobs = logits.float().log_softmax(dim=1)
    top = logprobs.topk(max_k, dim=1).values
    keep = torch.arange(max_k, device=logits.device).unsqueeze(0) < top_k.unsqueeze(1)
    return -torch.where(keep, top, 0.0).sum(dim=1) / top_k.to(torch.float32)
