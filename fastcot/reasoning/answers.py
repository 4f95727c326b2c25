"""Final answers of completions and majority voting over them (self-consistency).

`extract_answer` finds a completion's final answer (the last `\\boxed{...}`, else the last
"Final answer: ..." / "The answer is ..." line) and normalizes it so that equal answers written
slightly differently vote together. `majority_vote` counts them; `vote_is_decided` says when
the samples still running can no longer change the winner, so they can be stopped early.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Final answer: X", "**Final Answer:** X", "**Final answer**: X".
FINAL_ANSWER_MARKER = re.compile(r"(?:\*\*)?\bfinal\s+answer\s*(?:\*\*)?\s*:(?:\*\*)?", re.IGNORECASE)
# "The (final) answer is X": weaker ("the answer is correct"), used only without a marker above.
_ANSWER_IS = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"([+-]?)(\d+)(?:\.(\d*))?")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")


def _balanced_group(text: str, open_brace: int, stop: int | None = None) -> str | None:
    """The text inside the brace at `open_brace` up to its matching close, or None when the
    braces do not balance before `stop` (default: the end; a truncated completion)."""
    depth = 0
    for i in range(open_brace, len(text) if stop is None else stop):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1:i]
    return None


def _last_boxed(text: str) -> str | None:
    # A group open at an unbalanced later group's start never closes after it: scanning up to
    # there keeps the whole search linear in len(text).
    stop = len(text)
    for match in reversed(list(_BOXED.finditer(text))):
        content = _balanced_group(text, match.end() - 1, stop)
        if content is not None:
            return content
        stop = match.start()
    return None


def _unwrap_boxed(text: str) -> str:
    """`\\boxed{X}` -> X when the whole text is one boxed group."""
    match = _BOXED.match(text)
    if match and text.endswith("}"):
        content = _balanced_group(text, match.end() - 1)
        if content is not None and match.end() + len(content) + 1 == len(text):
            return content.strip()
    return text


def _last_marked(text: str) -> str | None:
    """What follows the last answer marker on its line (or on the next non-empty line)."""
    matches = list(FINAL_ANSWER_MARKER.finditer(text)) or list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    lines = text[matches[-1].end():].split("\n")
    return next((line.strip() for line in lines if line.strip()), None)


def _strip_pair(text: str, left: str, right: str) -> str:
    if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
        return text[len(left):len(text) - len(right)].strip()
    return text


def normalize_answer(answer: str) -> str | None:
    """The canonical form of an answer string, or None when nothing is left.

    Conservative: strips whitespace, surrounding `**`, `$`/`$$`, `\\(...\\)`, a trailing period,
    a whole-answer `\\text{...}` (also `\\textbf`, `\\mathrm`, `\\mathbf`), a `\\boxed{...}`
    wrapper; `\\dfrac`/`\\tfrac` become `\\frac`. A plain number loses thousands separators
    ("1,000" -> "1000"), a leading "+" and trailing fractional zeros ("12.50" -> "12.5",
    "12.0" -> "12", "-0" -> "0"). Nothing else changes: "1/2" and "0.5" stay different, so do
    "x=3" and "3", and letter case is kept.
    """
    text = answer.strip()
    previous = None
    while text != previous:
        previous = text
        text = _strip_pair(text, "**", "**")
        text = _strip_pair(text, "$$", "$$")
        text = _strip_pair(text, "$", "$")
        text = _strip_pair(text, "\\(", "\\)")
        text = _strip_pair(text, "\\[", "\\]")
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
        text = _unwrap_boxed(text)
        wrapped = _TEXT_WRAPPER.fullmatch(text)
        if wrapped:
            text = wrapped.group(1).strip()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    number = _DECIMAL.fullmatch(text)
    if number:
        sign, whole, fraction = number.groups()
        fraction = (fraction or "").rstrip("0")
        text = whole + (f".{fraction}" if fraction else "")
        if sign == "-" and text.strip("0.") != "":
            text = "-" + text
    return text or None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, normalized (`normalize_answer`), or None.

    Looks for, in order: the last `\\boxed{...}` (or `\\fbox{...}`) whose braces balance
    (nested braces kept: `\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`); else the last
    "Final answer: X" / "**Final Answer:** X" (case-insensitive); else the last "The (final)
    answer is X". X is the rest of the marker's line, or the next non-empty line when the
    marker ends its line.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    found = _last_boxed(text)
    if found is None:
        found = _last_marked(text)
    if found is None:
        return None
    return normalize_answer(found)


def majority_vote(answers: list[str | None]) -> tuple[str | None, dict[str, int]]:
    """The most frequent answer and the vote counts.

    None answers (no answer found) do not vote. `counts` lists answers in the order they first
    appeared. A tie goes to the answer that reached the winning count first, reading
    `answers` in order (the leader keeps the lead until overtaken), e.g.
    `["a", "b", "b", "a"]` -> "b". Returns (None, {}) when no answer votes.
    """
    counts: dict[str, int] = {}
    winner, best = None, 0
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        if not isinstance(answer, str):
            raise TypeError(f"answers[{i}] must be a str or None, got {type(answer).__name__}")
        counts[answer] = counts.get(answer, 0) + 1
        if counts[answer] > best:
            winner, best = answer, counts[answer]
    return winner, counts


def vote_is_decided(counts: dict[str, int], remaining: int) -> bool:
    """True when no outcome of the `remaining` samples can change the winner.

    That is when all samples are in (`remaining == 0`), or the leader has more votes than the
    runner-up could reach with every remaining vote: `leader > runner_up + remaining` (strict,
    whatever the tie rule; a new answer counts as a runner-up with 0 votes). Samples that end
    without an answer only help the leader.
    """
    if not isinstance(remaining, int) or isinstance(remaining, bool):
        raise TypeError(f"remaining must be an int, got {type(remaining).__name__}")
    if remaining < 0:
        raise ValueError(f"remaining must be >= 0, got {remaining}")
    if not isinstance(counts, dict):
        raise TypeError(f"counts must be a dict of answer -> votes, got {type(counts).__name__}")
    for answer, votes in counts.items():
        if not isinstance(votes, int) or isinstance(votes, bool) or votes < 0:
            raise ValueError(f"counts[{answer!r}] must be an int >= 0, got {votes!r}")
    if remaining == 0:
        return True
    top = sorted(counts.values(), reverse=True)[:2] + [0, 0]
    return top[0] > top[1] + remaining
