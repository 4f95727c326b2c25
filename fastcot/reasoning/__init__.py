"""Engine-independent building blocks for long chain-of-thought generation.

Pure Python, no torch: n-gram draft proposals for speculative decoding (`NgramIndex`),
degenerate-loop detection (`RepetitionGuard`), final-answer extraction and majority voting
(`extract_answer`, `majority_vote`, `vote_is_decided`), and thinking sections of reasoning
models (`ThinkingDelimiters`, `find_thinking_delimiters`, `ReasoningSplitter`, `ThinkingState`,
`COT_SYSTEM_PROMPT`, `split_cot_answer`). Everything that runs per generated token costs O(1)
amortized in the output length.
"""

from fastcot.reasoning.answers import (
    extract_answer,
    majority_vote,
    normalize_answer,
    vote_is_decided,
)
from fastcot.reasoning.ngram import NgramIndex, propose_from
from fastcot.reasoning.repetition import RepetitionGuard

__all__ = [
    "NgramIndex", "RepetitionGuard", "extract_answer", "majority_vote", "normalize_answer", "propose_from",
    "vote_is_decided",
]
