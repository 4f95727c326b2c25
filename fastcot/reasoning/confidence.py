"""Confidence of reasoning paths and DeepConf voting (Fu et al. 2025, "Deep Think with Confidence").

Definitions (the engine computes the first two on the device, see `SamplingParams.confidence_window`):

- *token confidence* of an output position: minus the mean log-probability of the `top_k`
  most likely tokens of the model's raw distribution there, `-(1/k) sum_j log p_j`. A peaked
  distribution gives a high value, a flat one a low value (at least `log V` for k = V).
- *group confidence* after token t: the mean token confidence of the last `window` tokens
  (all tokens while fewer than `window` have been generated).
- *lowest group confidence* of a path: the minimum group confidence over its full windows
  (positions with at least `window` tokens behind them), or, for a path shorter than
  `window`, the mean over all its tokens. DeepConf's trace confidence, used here for both
  filtering and vote weights.

DeepConf (`ConfidenceConfig`, `fastcot.self_consistency(..., confidence=...)`):

- *offline*: every path runs to its end; the vote keeps the `eta` percent most confident
  paths (`top_eta`) and weighs each vote by its confidence (`weighted_vote`).
- *online*: `warmup` paths run in full and set the threshold, the `100 - eta` percentile of
  their lowest group confidences (`confidence_threshold`); every later path stops as soon as
  a full window's group confidence falls below it and does not vote. The vote (warm-up paths
  at or above the threshold, and the later paths that finished) is weighted by confidence and
  stops early once the leading answer holds `consensus` of the weight (`has_consensus`).

Defaults follow the paper's reference code (facebookresearch/deepconf, `deepconf-online.py`):
top-k 20 (its `logprobs=20`), window 2048, 16 warm-up paths, eta 10 (its 90th-percentile
threshold: DeepConf-low; 90 is DeepConf-high). The consensus fraction 0.95 is the paper's
adaptive-sampling threshold as we read it; the reference code has no consensus stop.
Pure Python: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE_MODES = ("offline", "online")


@dataclass(frozen=True)
class PathConfidence:
    """What the engine read of one sample's confidence (`CompletionOutput.confidence`).

    `num_tokens`: output tokens scored (one per output token); `mean`: mean token confidence
    over all of them; `group`: the latest group confidence (the mean of the last `window`
    tokens); `lowest`: the lowest group confidence (see the module docstring); `stop_index`:
    with a `confidence_threshold`, the number of output tokens when a full window's group
    confidence first fell below it (None if it never did)."""

    num_tokens: int
    mean: float
    group: float
    lowest: float
    stop_index: int | None = None


@dataclass(frozen=True)
class ConfidenceConfig:
    """DeepConf settings for `fastcot.self_consistency(..., confidence=...)`.

    `mode`: "online" (warm-up, then early stopping) or "offline" (all paths run, filter and
    weigh). `eta`: percent of paths kept (offline: the most confident `eta`% vote; online:
    the threshold is the `100 - eta` percentile of the warm-up paths' confidences), in
    (0, 100]. `warmup`: online warm-up paths (>= 1). `window`: tokens per group (>= 1).
    `top_k`: candidates per token confidence (>= 1). `consensus`: online, stop voting once
    the leader holds this fraction of the weight, in (0, 1] (1: never early). `interval`:
    decode steps between the host's reads of the device state (>= 1); an online path stops
    at the first read after its group confidence falls below the threshold (`interval=1`:
    at that very token).
    """

    mode: str = "online"
    eta: float = 10.0
    warmup: int = 16
    window: int = 2048
    top_k: int = 20
    consensus: float = 0.95
    interval: int = 8

    def __post_init__(self):
        if self.mode not in CONFIDENCE_MODES:
            raise ValueError(f"confidence mode must be one of {list(CONFIDENCE_MODES)}, got {self.mode!r}")
        for name, low in (("warmup", 1), ("window", 1), ("top_k", 1), ("interval", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"confidence {name} must be an int >= {low}, got {value!r}")
        for name, ok, expected in (("eta", lambda v: 0 < v <= 100, "in (0, 100]"),
                                   ("consensus", lambda v: 0 < v <= 1, "in (0, 1]")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"confidence {name} must be a number {expected}, got {value!r}")

    @classmethod
    def from_user(cls, value) -> ConfidenceConfig | None:
        """None/False: off; True: the defaults; "online"/"offline": that mode; a dict of fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(mode=value)
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown confidence settings {sorted(unknown)}; known: "
                                 f"{sorted(cls.__dataclass_fields__)}")
            return cls(**value)
        raise TypeError(f"confidence must be None, a bool, 'online', 'offline', a dict or a ConfidenceConfig, "
                        f"got {type(value).__name__}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, interpolating linearly between order
    statistics (numpy's default): rank `q/100 * (n - 1)` in the sorted values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def confidence_threshold(confidences: Sequence[float], eta: float) -> float:
    """The online stopping threshold from warm-up paths' lowest group confidences: the
    `100 - eta` percentile (eta 10: only paths as confident as the top 10% go on)."""
    return percentile(confidences, 100 - eta)


def top_eta(confidences: Sequence[float], eta: float) -> list[int]:
    """Indices of the `ceil(eta% of n)` most confident paths (at least one), in index order.
    Ties at the cut go to the lower index."""
    if not confidences:
        return []
    keep = max(1, math.ceil(len(confidences) * eta / 100 - 1e-9))
    order = sorted(range(len(confidences)), key=lambda i: (-confidences[i], i))
    return sorted(order[:keep])


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> tuple[str | None, dict[str, float]]:
    """The answer with the most weight and the weight per answer (in order of first
    appearance). None answers do not vote; a tie goes to the answer that appeared first.
    Returns (None, {}) when nothing votes."""
    if len(answers) != len(weights):
        raise ValueError(f"got {len(answers)} answers and {len(weights)} weights")
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + float(weight)
    if not totals:
        return None, {}
    best = max(totals.values())
    winner = next(a for a, w in totals.items() if w == best)
    return winner, totals


def has_consensus(totals: dict[str, float], consensus: float) -> bool:
    """True when the leading answer holds at least `consensus` of the total weight."""
    total = sum(totals.values())
    return total > 0 and max(totals.values()) >= consensus * total
