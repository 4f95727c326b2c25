"""Broken checkpoints: each error names the file at fault and the fix, and comes before any
weight is read (the weight-streaming step is replaced by one that fails the test if reached).

Every broken checkpoint is a copy of the tiny checkpoints of hf_checkpoints.py with one thing
wrong; missing packages are simulated by hiding the module from `import`."""

import json
import os
import re
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

import fastcot
from fastcot.models import checkpoint, load_config, load_model, load_tokenizer, loader, presets
from fastcot.models.loader import check_checkpoint


@pytest.fixture(autouse=True)
def no_weight_reading(monkeypatch):
    """Checks must fail before the weights are streamed in."""
    def reached(*args, **kwargs):
        raise AssertionError("the weights were being read before the checkpoint was checked")

    monkeypatch.setattr(loader, "_CheckpointLoader", reached)


@pytest.fixture
def ckpt(hf_checkpoints, tmp_path):
    """A writable copy of the unsharded Llama checkpoint, with the tiny-random tokenizer saved in."""
    path = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoints["llama"].path, path)
    presets.preset_tokenizer("tiny-random").save_pretrained(str(path))
    return path


@pytest.fixture
def sharded(hf_checkpoints, tmp_path):
    path = tmp_path / "sharded"
    shutil.copytree(hf_checkpoints["llama-tied-sharded"].path, path)
    return path


def shards(path):
    return sorted(path.glob("model-*.safetensors"))


# --- config.json and the other JSON files ---------------------------------------------------

@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_corrupt_json_names_the_file_and_the_position(ckpt, name):
    (ckpt / name).write_text('{\n  "hidden_size": 64\n  "vocab_size": 256\n}')
    for call in (load_config, load_model, check_checkpoint):
        with pytest.raises(ValueError) as err:
            call(ckpt)
        message = str(err.value)
        assert str(ckpt / name) in message
        assert "Expecting ',' delimiter at line 3 column 3" in message and "download it again" in message


def test_corrupt_index_names_the_index(sharded):
    index = sharded / checkpoint.INDEX_FILE
    index.write_text(index.read_text()[:50])
    with pytest.raises(ValueError, match=re.escape(f"{index} is not valid JSON")):
        load_model(sharded, device="cpu")


def test_unsupported_architecture_names_the_file_and_the_supported_ones(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError) as err:
        load_model(ckpt, device="cpu")
    assert str(err.value) == (f"{ckpt / 'config.json'}: architectures ['GPT2LMHeadModel'] not supported; fastcot runs "
                              "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM (Llama-family decoders)")


@pytest.mark.parametrize("layout", ["empty", "weights-only", "hf-cache", "nested"])
def test_directory_without_config(ckpt, tmp_path, layout):
    path = tmp_path / layout
    if layout == "empty":
        path.mkdir()
        hint = "the directory is empty"
    elif layout == "weights-only":
        path.mkdir()
        shutil.copy(ckpt / "model.safetensors", path)
        hint = "holds config.json, the weights"
    elif layout == "hf-cache":
        snapshot = path / "snapshots" / "0123abcd"
        shutil.copytree(ckpt, snapshot)
        hint = f"Hugging Face cache folder: pass its snapshot {str(snapshot)!r}"
    else:
        shutil.copytree(ckpt, path / "inner")
        hint = f"did you mean {str(path / 'inner')!r}?"
    with pytest.raises(FileNotFoundError) as err:
        load_model(path, device="cpu")
    assert f"no config.json in {str(path)!r}" in str(err.value) and hint in str(err.value)


# --- names that are not directories ---------------------------------------------------------

def test_hub_id_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (load_config, load_model, load_tokenizer, fastcot.LLM):
        with pytest.raises(FileNotFoundError) as err:
            call("meta-llama/Llama-3.1-8B")
        message = str(err.value)
        assert "does not download" in message
        assert "`huggingface-cli download meta-llama/Llama-3.1-8B --local-dir Llama-3.1-8B`" in message
        assert "`hf download meta-llama/Llama-3.1-8B --local-dir Llama-3.1-8B`" in message


def test_other_names(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="did you mean the preset 'tiny-random'"):
        load_model("tiny-randm", device="cpu")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no directory {str(tmp_path / 'nowhere')!r}")):
        load_model(tmp_path / "nowhere", device="cpu")
    with pytest.raises(NotADirectoryError, match="is a file; pass the directory that holds its config.json"):
        load_model(ckpt / "model.safetensors", device="cpu")
    with pytest.raises(TypeError, match="got int"):
        load_model(3, device="cpu")


# --- weights ----------------------------------------------------------------------------------

def test_missing_shard_names_the_shard_and_the_index(sharded):
    lost = shards(sharded)[3]
    lost.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_model(sharded, device="cpu")
    assert str(err.value) == (
        f"{sharded / checkpoint.INDEX_FILE} lists the shard {lost.name!r}, missing from {str(sharded)!r}: the "
        "download is incomplete; download the missing shards again (`huggingface-cli download` resumes)"
    )
    for shard in shards(sharded)[:4]:
        shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"lists the shards 'model-00001-of-00011.safetensors', .* and 2 more"):
        load_model(sharded, device="cpu")


@pytest.mark.parametrize("keep", [0.5, 0.9999, 8])
def test_truncated_shard_is_named(sharded, keep):
    """Cut in the data, a few bytes short, or inside the header length."""
    shard = shards(sharded)[2]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(keep if isinstance(keep, int) else int(size * keep))
    with pytest.raises(ValueError) as err:
        check_checkpoint(sharded, tokenizer=False)
    message = str(err.value)
    assert message.startswith(f"{shard} (listed in {checkpoint.INDEX_FILE}) is not a readable safetensors file")
    assert "truncated or corrupt" in message and "download it again" in message


def test_truncated_single_file_and_lfs_pointer(ckpt):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=re.escape(f"{weights} is not a readable safetensors file")):
        load_model(ckpt, device="cpu")
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 363792\n")
    with pytest.raises(ValueError, match=re.escape(f"{weights} is a Git LFS pointer, not the weights: run `git lfs pull`")):
        load_model(ckpt, device="cpu")


def test_pickle_weights_are_refused_with_a_conversion_that_works(ckpt, monkeypatch):
    tensors = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    torch.save(tensors, ckpt / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_model(ckpt, device="cpu")
    message = str(err.value)
    assert "pytorch_model.bin" in message and "loads safetensors only" in message
    command = re.search(r'python -c "(.*)"$', message).group(1)
    exec(command, {})  # the suggested conversion, run here
    monkeypatch.undo()  # let the weights load now
    model = load_model(ckpt, device="cpu")
    assert len(model.model.layers) == 2


def test_no_weights_lists_what_is_there(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*no \\*.safetensors files \\(it holds: .*config.json, generation_config.json"):
        load_model(ckpt, device="cpu")


# --- tokenizer and packages -----------------------------------------------------------------

def test_missing_tokenizer_is_found_before_the_weights(ckpt):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    for call in (check_checkpoint, load_tokenizer):
        with pytest.raises(FileNotFoundError) as err:
            call(ckpt)
        assert f"no tokenizer files in {str(ckpt)!r}" in str(err.value)
        assert "huggingface-cli download ID tokenizer.json tokenizer_config.json" in str(err.value)
    assert check_checkpoint(ckpt, tokenizer=False).num_hidden_layers == 2


def test_good_checkpoint_passes_the_checks(ckpt):
    assert check_checkpoint(ckpt).vocab_size == 256
    assert check_checkpoint("tiny-random").vocab_size == 261


@pytest.mark.parametrize("package", ["transformers", "safetensors"])
def test_missing_package_names_the_extra(ckpt, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    calls = [load_tokenizer, lambda p: presets.byte_tokenizer(300, {"<s>": 256, "</s>": 257}), check_checkpoint]
    if package == "safetensors":
        calls = [lambda p: load_model(p, device="cpu"), check_checkpoint]
    for call in calls:
        with pytest.raises(ImportError) as err:
            call(ckpt)
        assert f"needs the {package!r} package, which is not installed: pip install 'fastcot[models]'" in str(err.value)


def test_readme_names_the_models_extra():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    assert "fastcot[models]" in readme
