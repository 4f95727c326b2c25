"""Fixtures shared by the engine tests: one tiny random Llama checkpoint (transformers, saved
as safetensors, with the byte-level tokenizer of the `tiny-random` preset; prompts here are
mostly token ids), built once per session."""

import pytest
from helpers import load_test_module


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory):
    """`(path, hf_model)`: the checkpoint directory and the float32 transformers model saved there."""
    pytest.importorskip("transformers")
    import fastcot.models

    hf = load_test_module("models/hf_checkpoints.py")
    model = hf.make_hf_model("LlamaConfig", tie_word_embeddings=False)
    path = hf.save_checkpoint(model, tmp_path_factory.mktemp("llama"))
    fastcot.models.load_tokenizer("tiny-random").save_pretrained(str(path))
    return path, model


@pytest.fixture(autouse=True)
def _one_thread():
    """The engine tests run tiny models: a second intra-op thread buys nothing there, and on a
    shared machine a descheduled one stalls every op for milliseconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
