"""Engine-independent building blocks for long chain-of-thought generation.

Pure Python, no torch: n-gram and suffix draft proposals for speculative decoding (`NgramIndex`,
`SuffixIndex` with `SuffixCache`),
degenerate-loop detection (`RepetitionGuard`), final-answer extraction and majority voting
(`extract_answer`, `majority_vote`, `vote_is_decided`), and thinking sections of reasoning
models (`ThinkingDelimiters`, `find_thinking_delimiters`, `ReasoningSplitter`, `ThinkingState`,
`COT_SYSTEM_PROMPT`, `split_cot_answer`, reasoning-effort budgets), and DeepConf's
confidence filtering and weighted voting (`ConfidenceConfig`, `fastcot.reasoning.confidence`). Everything that runs per generated token costs O(1)
amortized in the output length.
"""

from fastcot.reasoning.answers import (
    extract_answer,
    majority_vote,
    normalize_answer,
    vote_is_decided,
)
from fastcot.reasoning.confidence import ConfidenceConfig, PathConfidence
from fastcot.reasoning.ngram import NgramIndex, propose_from
from fastcot.reasoning.repetition import RepetitionGuard
from fastcot.reasoning.suffix import SuffixCache, SuffixIndex
from fastcot.reasoning.thinking import (
    COT_SYSTEM_PROMPT,
    KNOWN_DELIMITERS,
    REASONING_EFFORT_BUDGETS,
    ReasoningSplitter,
    ThinkingDelimiters,
    ThinkingState,
    effort_budget,
    find_thinking_delimiters,
    prompt_opens_thinking,
    split_cot_answer,
)

__all__ = [
    "COT_SYSTEM_PROMPT", "KNOWN_DELIMITERS", "REASONING_EFFORT_BUDGETS", "ConfidenceConfig", "NgramIndex",
    "PathConfidence", "ReasoningSplitter", "RepetitionGuard", "ThinkingDelimiters", "ThinkingState", "effort_budget",
    "extract_answer", "find_thinking_delimiters", "majority_vote", "normalize_answer", "prompt_opens_thinking",
    "propose_from", "split_cot_answer", "vote_is_decided",
]
__all__ += ["SuffixCache", "SuffixIndex"]
