"""Engine-independent building blocks for long chain-of-thought generation.

Pure Python, no torch: n-gram and suffix draft proposals for speculative decoding (`NgramIndex`,
`SuffixIndex` with `SuffixCache`),
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
from fastcot.reasoning.suffix import SuffixCache, SuffixIndex
from fastcot.reasoning.thinking import (
    COT_SYSTEM_PROMPT,
    KNOWN_DELIMITERS,
    ReasoningSplitter,
    ThinkingDelimiters,
    ThinkingState,
    find_thinking_delimiters,
    prompt_opens_thinking,
    split_cot_answer,
)

__all__ = [
    "COT_SYSTEM_PROMPT", "KNOWN_DELIMITERS", "NgramIndex", "ReasoningSplitter", "RepetitionGuard",
    "ThinkingDelimiters", "ThinkingState", "extract_answer", "find_thinking_delimiters", "majority_vote",
    "normalize_answer", "prompt_opens_thinking", "propose_from", "split_cot_answer", "vote_is_decided",
]
__all__ += ["SuffixCache", "SuffixIndex"]
