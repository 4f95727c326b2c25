"""Self-consistency: sample several reasoning paths for one prompt, vote on their answers.

The `n` samples are one request, so they share the prompt's KV blocks (copy-on-write at the
partly filled block). Each sample's final answer is extracted as it finishes; with
`early_stop`, the remaining samples are aborted once no outcome of theirs could change the
majority.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from fastcot.engine.sampling import SamplingParams
from fastcot.reasoning import extract_answer, majority_vote, vote_is_decided


@dataclass
class Sample:
    """One reasoning path: its answer (None if none could be extracted), its text (the answer
    part for reasoning models), its thinking text, and why it ended ("abort" if stopped early)."""

    index: int
    answer: str | None
    text: str
    reasoning_text: str
    finish_reason: str | None


@dataclass
class SelfConsistencyResult:
    answer: str | None  # the majority answer (None if no sample gave one)
    counts: dict[str, int]  # votes per answer, in order of first appearance
    samples: list[Sample]  # by sample index
    stopped_early: bool  # the vote was decided before every sample finished


def self_consistency(llm, prompt, n: int, sampling_params: SamplingParams | None = None, *,
                     extract: Callable[[str], str | None] = extract_answer, early_stop: bool = True,
                     reasoning: str | None = None, use_tqdm: bool = True) -> SelfConsistencyResult:
    """Majority vote over `n` sampled completions of `prompt`.

    Args:
        llm: a `fastcot.LLM`.
        prompt: a string, token ids, or a conversation (a list of `{"role", "content"}` dicts,
            put through the chat template, with `reasoning="cot"` as in `LLM.chat`).
        n: samples (>= 1); they share the prompt's cache blocks.
        sampling_params: their parameters (`n` is replaced); default temperature 0.7,
            max_tokens 2048. Greedy samples would all agree.
        extract: the answer of one sample's text (the answer part for reasoning models).
        early_stop: abort the remaining samples once the vote is decided.
        use_tqdm: a progress bar of finished samples, with the votes so far (tqdm, if installed).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not callable(extract):
        raise TypeError(f"extract must be callable, got {type(extract).__name__}")
    params = sampling_params or SamplingParams(temperature=0.7, max_tokens=2048)
    params = dataclasses.replace(params, n=n)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        prompt = llm.chat_prompt(prompt, reasoning=reasoning)
    elif reasoning is not None:
        raise ValueError("reasoning applies to a conversation prompt (a list of message dicts)")
    texts = {i: [] for i in range(n)}
    thoughts = {i: [] for i in range(n)}
    finished: dict[int, str] = {}
    answers: dict[int, str | None] = {}
    stopped_early = False
    bar = _progress(n, use_tqdm)
    try:
        for delta in llm.generate_stream(prompt, params):
            (thoughts if delta.kind == "reasoning" else texts)[delta.index].append(delta.text)
            if delta.finish_reason is None or delta.index in finished:
                continue
            finished[delta.index] = delta.finish_reason
            if delta.finish_reason != "abort":
                text = "".join(texts[delta.index])
                answers[delta.index] = extract(text)
            _, counts = majority_vote(list(answers.values()))
            if bar is not None:
                bar.set_postfix_str(", ".join(f"{a}: {c}" for a, c in list(counts.items())[:4]), refresh=False)
                bar.update(1)
            if early_stop and not stopped_early and len(finished) < n and counts \
                    and vote_is_decided(counts, n - len(finished)):
                stopped_early = True
                llm.abort(delta.request_id)
    finally:
        if bar is not None:
            bar.close()
    winner, counts = majority_vote([answers[i] for i in sorted(answers)])
    samples = [Sample(i, answers.get(i), "".join(texts[i]), "".join(thoughts[i]), finished.get(i)) for i in range(n)]
    return SelfConsistencyResult(winner, counts, samples, stopped_early)



def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="self-consistency", unit="sample", dynamic_ncols=True)
