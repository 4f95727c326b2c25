"""vLLM-compatible inputs: prompts as strings, token ids or prompt dicts (alone or in lists),
chat with vLLM's template options, and clear TypeErrors for anything else."""

import pytest

from fastcot import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny-random", device="cpu", num_kv_blocks=64, max_model_len=1024)


def ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_prompt_forms_agree(llm):
    tokenizer = llm.get_tokenizer()
    text = "Hello there"
    tokens = tokenizer.encode(text)
    expected = ids(llm.generate([tokens], GREEDY, use_tqdm=False))
    forms = [text, tokens, {"prompt": text}, {"prompt_token_ids": tokens}, {"prompt_token_ids": tokens, "prompt": "x"}]
    for form in forms:
        (out,) = llm.generate(form, GREEDY, use_tqdm=False)  # a single prompt of each form
        assert [out.outputs[0].token_ids] == expected and out.prompt_token_ids == tokens
    outs = llm.generate(forms, GREEDY, use_tqdm=False)  # and all of them in one list
    assert ids(outs) == expected * len(forms)
    assert [o.prompt for o in outs] == [text, None, text, None, "x"]
    assert llm.generate([], GREEDY, use_tqdm=False) == []
    assert ids(llm.generate((tokens, text), GREEDY, use_tqdm=False)) == expected * 2


@pytest.mark.parametrize("bad, error, match", [
    (None, TypeError, "prompts must be a prompt or a list of prompts, got NoneType"),
    (3, TypeError, "got int"),
    (b"bytes", TypeError, "got bytes"),
    ([3.5], TypeError, "a prompt must be a str, a list of token ids, or a dict"),
    ([[1, "a"]], TypeError, "got list holding str"),
    ([{"text": "hi"}], ValueError, "unknown keys"),
    ([{"prompt_token_ids": "hi"}], TypeError, r"prompt\['prompt_token_ids'\] must be a list of token ids"),
    ([{"prompt": 5}], TypeError, r"prompt\['prompt'\] must be a str"),
    ([{}], ValueError, "needs 'prompt' or 'prompt_token_ids'"),
    ([[True, False]], TypeError, "got list holding bool"),
    ([[]], ValueError, "must not be empty"),
    ([""], ValueError, "must not be empty"),
    ([[1, 10**6]], ValueError, r"prompt token ids must lie in \[0, 261\)"),
])
def test_bad_prompts(llm, bad, error, match):
    with pytest.raises(error, match=match):
        llm.generate(bad, GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()


def test_bad_sampling_params(llm):
    with pytest.raises(TypeError, match="sampling_params must be SamplingParams"):
        llm.generate(["a"], {"temperature": 0}, use_tqdm=False)
    with pytest.raises(ValueError, match="got 2 sampling_params for 1 prompts"):
        llm.generate(["a"], [GREEDY, GREEDY], use_tqdm=False)


def test_chat_options(llm):
    tokenizer = llm.get_tokenizer()
    conversation = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    (out,) = llm.chat(conversation, GREEDY, use_tqdm=False)
    assert out.prompt_token_ids == prompt
    # Text parts are joined as OpenAI's content format allows.
    parts = [{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]
    assert llm.chat(parts, GREEDY, use_tqdm=False)[0].prompt_token_ids == prompt
    # Two conversations at once; a template of one's own with its own variables.
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{{ suffix }}"
    outs = llm.chat([conversation, conversation], GREEDY, use_tqdm=False, chat_template=template,
                    chat_template_kwargs={"suffix": "!"}, add_generation_prompt=False)
    assert [o.prompt_token_ids for o in outs] == [tokenizer.encode("<user>hi!", add_special_tokens=False)] * 2
    # Continuing the last (assistant) message: its text is not closed.
    partial = conversation + [{"role": "assistant", "content": "The answer"}]
    (out,) = llm.chat(partial, GREEDY, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
    assert tokenizer.decode(out.prompt_token_ids).endswith("The answer")
    with pytest.raises(ValueError, match="cannot both be True"):
        llm.chat(partial, GREEDY, use_tqdm=False, continue_final_message=True)
    with pytest.raises(ValueError, match="needs a last message with role 'assistant'"):
        llm.chat(conversation, GREEDY, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)


@pytest.mark.parametrize("bad, match", [
    ("hello", r"messages must be a conversation .* \(use generate\(\) for a plain text prompt\)"),
    (None, "messages must be a conversation"),
    ([], "messages must be a conversation"),
    ([{"content": "no role"}], "must be a dict with a str 'role'"),
    ([{"role": "user", "content": 5}], "'content' must be a str or a list of parts"),
    ([[{"role": "user", "content": "a"}], "b"], "messages must be a conversation"),
])
def test_bad_chat_inputs(llm, bad, match):
    with pytest.raises(TypeError, match=match):
        llm.chat(bad, GREEDY, use_tqdm=False)
