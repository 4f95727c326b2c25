"""Streaming: the text handed out while a request runs adds up to its final text, whatever
stop strings, special tokens and thinking sections do to it."""

import dataclasses

import pytest
import torch

import fastcot.models
from fastcot import LLM, SamplingParams


class ScriptedText(torch.nn.Module):
    """Writes `script` (a list of token ids; byte-level: a character's byte is its id), one
    token per position after a prompt of `prompt_len` tokens, then repeats it."""

    def __init__(self, config, script, prompt_len):
        super().__init__()
        self.config, self.script, self.prompt_len = config, script, prompt_len
        self.lm_head_weight = torch.zeros(1, dtype=torch.float32)

    def forward(self, input_ids, positions, kv_caches, metadata):
        return positions.to(torch.float32).unsqueeze(1)

    def compute_logits(self, hidden):
        logits = torch.zeros(hidden.shape[0], self.config.vocab_size)
        for row, position in enumerate(hidden[:, 0].long().tolist()):
            logits[row, self.script[(position + 1 - self.prompt_len) % len(self.script)]] = 10.0
        return logits


def scripted_llm(text, prompt_len=3, **kwargs):
    config = dataclasses.replace(fastcot.models.load_config("tiny-random"), num_hidden_layers=1,
                                 max_position_embeddings=512)
    tokenizer = fastcot.models.load_tokenizer("tiny-random")
    script = list(text.encode()) if isinstance(text, str) else text
    return LLM.from_model(ScriptedText(config, script, prompt_len), tokenizer, device="cpu", num_kv_blocks=128,
                          block_size=4, **kwargs)


def streamed(llm, prompt, params):
    deltas = list(llm.generate_stream([prompt], params))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


TEXT = "Say S then SS, and S S; the end. "


def test_the_stream_never_hands_out_what_a_stop_string_removes():
    # The stream used to yield "S" at once; the stop string "S " then cut it from the final text.
    llm = scripted_llm("S S.")
    params = SamplingParams(temperature=0, max_tokens=4, stop=["S "])
    final = llm.generate([[10, 11, 12]], params, use_tqdm=False)[0].outputs[0]
    assert (final.text, final.finish_reason) == ("", "stop")
    assert streamed(llm, [10, 11, 12], params) == ("", "stop")


@pytest.mark.parametrize("stops", [["S "], ["S S;"], ["SS,", "then"], [" S S", "S,"], ["end. "], ["x"], ["Say"],
                                   ["; t", "n S", "a"]])
@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("max_tokens", [3, 9, 14, 33])
def test_streamed_text_equals_the_final_text(stops, include, max_tokens):
    llm = scripted_llm(TEXT)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop=stops, include_stop_str_in_output=include)
    final = llm.generate([[10, 11, 12]], params, use_tqdm=False)[0].outputs[0]
    assert streamed(llm, [10, 11, 12], params) == (final.text, final.finish_reason)
    cut = [TEXT.find(s) for s in stops if -1 < TEXT.find(s) and TEXT.find(s) + len(s) <= max_tokens]
    if cut:  # the earliest stop string ends the text (kept with include_stop_str_in_output)
        at = min(cut)
        stop = min((s for s in stops if TEXT.find(s) == at), key=len)
        assert final.finish_reason == "stop" and final.text == TEXT[: at + (len(stop) if include else 0)]
    else:
        assert final.finish_reason == "length" and final.text == TEXT[:max_tokens]
