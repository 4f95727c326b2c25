"""A synthetic reasoning task whose answer and confidence structure are known, for DeepConf.

`PlanModel` is a stub model (no weights, no math; it drives the real engine, sampler and KV
cache) whose completions are, byte by byte with the `tiny-random` tokenizer:

    <plan digit> <tail of letters> "\\nFinal answer: " <the plan's digit> EOS

The first output token draws a plan (an answer "1", "2" or "3") with the task's
probabilities. A *confident* plan's tail puts most of its mass on "a" (19 other letters 6
nats below after an "a", 4 after another letter), so its token confidences are high (about
5.7 and 3.8) and vary with the letters drawn; an *unsure* plan's tail is flat over 20 letters
(confidence log 20 = 3.0). Confident paths are shorter (a tail of `tail // 2` letters, against
`tail`), as correct chains of thought tend to be, so their votes come in first. Everything
else is forced (every other token 30 nats below). So the
correct answer (the confident plan) and which paths DeepConf should stop (the unsure ones)
are known in advance.

The model has no history in its inputs, so it keeps each sequence's plan in the KV cache it
is given: `forward` writes every input token id into element 0 of its key slot (the cache's
copies, forks and preemptions then carry it), and reads back the token at the plan's
position through the block table.

    TASKS["agree"]: the confident answer is also the plain majority.
    TASKS["trap"]:  an unsure wrong answer is the plain majority; the confident one is right.
"""

from __future__ import annotations

import dataclasses

import torch

EOS = 257
MARKER = "\nFinal answer: "
UNSURE_LETTERS = [ord(c) for c in "bcdefghijklmnopqrstu"]  # 20 letters
CONFIDENT = ord("a")
# answer -> (probability of the plan, confident?)
TASKS = {
    "agree": {"1": (0.5, True), "2": (0.3, False), "3": (0.2, False)},
    "trap": {"1": (0.25, True), "2": (0.55, False), "3": (0.2, False)},
}
CORRECT = "1"


class PlanModel(torch.nn.Module):
    """See the module docstring. `prompt_len`: the task's prompt length (the plan token
    sits at that position); `tail`: letters between the plan and the answer line."""

    def __init__(self, config, prompt_len: int, plans: dict, tail: int = 48):
        super().__init__()
        self.config = config
        self.prompt_len = prompt_len
        self.plans = plans
        self.tail = tail
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        k_cache = kv_caches[0][0]
        block_size = k_cache.shape[1]
        store = k_cache.view(k_cache.shape[0] * block_size, -1)
        slots = metadata.slot_mapping.long()
        written = slots >= 0
        store[slots[written], 0] = input_ids[written].to(store.dtype)
        rows = torch.arange(input_ids.shape[0])
        seq = rows if metadata.cu_seqlens_q is None else \
            torch.searchsorted(metadata.cu_seqlens_q[1:].long(), rows, right=True)
        tables = metadata.block_tables[seq].long()
        p0 = self.prompt_len
        column = min(p0 // block_size, tables.shape[1] - 1)
        plan = store[tables[:, column] * block_size + p0 % block_size, 0].round().long()
        plan = torch.where(positions >= p0, plan, -1)
        return torch.stack([input_ids, positions, plan], dim=1)

    def compute_logits(self, hidden):
        V = self.config.vocab_size
        logits = torch.full((hidden.shape[0], V), -30.0)
        line = MARKER
        for row, (token, position, plan) in enumerate(hidden.tolist()):
            i = position + 1 - self.prompt_len  # the output index predicted
            confident = plan >= 0 and self.plans[chr(plan)][1]
            tail = self.tail // 2 if confident else self.tail
            if i == 0:
                for answer, (p, _) in self.plans.items():
                    logits[row, ord(answer)] = float(torch.tensor(p).log())
            elif i <= tail:
                if confident:
                    logits[row, UNSURE_LETTERS[:19]] = -6.0 if token == CONFIDENT else -4.0
                    logits[row, CONFIDENT] = 0.0
                else:
                    logits[row, UNSURE_LETTERS] = 0.0
            elif i <= tail + len(line):
                logits[row, ord(line[i - tail - 1])] = 0.0
            elif i == tail + len(line) + 1:
                logits[row, plan] = 0.0
            else:
                logits[row, EOS] = 0.0
        return logits


def make_llm(task: str = "agree", *, prompt_len: int = 6, tail: int = 48, num_kv_blocks: int = 1024,
             block_size: int = 16, seed: int = 0):
    """A `fastcot.LLM` over `PlanModel` for `TASKS[task]` (CPU), and its prompt."""
    import fastcot
    import fastcot.models

    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), num_hidden_layers=1,
                                 max_position_embeddings=1024)
    model = PlanModel(config, prompt_len, TASKS[task], tail)
    llm = fastcot.LLM.from_model(model, fastcot.models.load_tokenizer("tiny-random"), device="cpu",
                                 num_kv_blocks=num_kv_blocks, block_size=block_size, max_model_len=1024, seed=seed)
    prompt = [11 + i for i in range(prompt_len)]
    return llm, prompt


def completion_length(confident: bool, tail: int = 48) -> int:
    """Output tokens of a path that runs to its end (plan, tail, answer line, digit, EOS)."""
    return 1 + (tail // 2 if confident else tail) + len(MARKER) + 2


# ---- the benchmark's rows -------------------------------------------------------------------

# (label, confidence settings, early_stop): the vote as documented, and online with the vote
# running to the end, where only the per-path stops save tokens.
MODES = (("offline eta=10", dict(mode="offline", eta=10.0), True),
         ("online eta=10", dict(mode="online", eta=10.0), True),
         ("online eta=10 all", dict(mode="online", eta=10.0), False),
         ("online eta=90", dict(mode="online", eta=90.0), True))


def deepconf_rows(*, n: int, seeds: list[int], window: int = 8, tasks=tuple(TASKS)) -> list[dict]:
    """Per task, seed and DeepConf mode: its answer against the plain majority of the same
    number of full paths (the same seed: offline draws the very same paths), tokens generated
    by each, and the tokens saved. Runs `PlanModel` on the CPU (a stub: no model compute)."""
    import fastcot
    from fastcot.reasoning import extract_answer, majority_vote

    rows = []
    for task in tasks:
        for seed in seeds:
            params = fastcot.SamplingParams(temperature=1.0, seed=seed, max_tokens=200)
            llm, prompt = make_llm(task, seed=seed)
            outs = llm.generate([prompt], dataclasses.replace(params, n=n), use_tqdm=False)[0].outputs
            full_answer, _ = majority_vote([extract_answer(o.text) for o in outs])
            full_tokens = sum(len(o.token_ids) for o in outs)
            for label, config, early_stop in MODES:
                mode = config["mode"]
                row = {"section": "deepconf", "text": task, "method": label, "mode": mode, "eta": config["eta"],
                       "seed": seed, "n": n, "window": window, "status": "ok", "full_answer": full_answer,
                       "full_tokens": full_tokens}
                try:
                    llm, prompt = make_llm(task, seed=seed)
                    result = fastcot.self_consistency(llm, prompt, n, params, use_tqdm=False, early_stop=early_stop,
                                                      confidence=dict(config, window=window))
                    saved = full_tokens - result.num_tokens
                    row |= {"answer": result.answer, "agrees": result.answer == full_answer,
                            "correct": result.answer == CORRECT, "full_correct": full_answer == CORRECT,
                            "generated_tokens": result.num_tokens, "saved_tokens": saved,
                            "saved_fraction": saved / full_tokens, "estimated_saved": result.num_saved_tokens,
                            "threshold": result.threshold, "voters": sum(s.voted for s in result.samples),
                            "stopped_low": sum(s.finish_reason == "low_confidence" for s in result.samples)}
                    if mode == "offline" and saved != 0:  # the same seed draws the same paths
                        row |= {"status": "wrong", "reason": "offline paths differ from the full run's"}
                    bm = llm.block_manager
                    if bm.num_free_blocks != bm.num_blocks:
                        row |= {"status": "wrong", "reason": "KV blocks left held after the run"}
                except Exception as exc:  # noqa: BLE001 - a row reports its failure
                    row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
                rows.append(row)
    return rows
