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
