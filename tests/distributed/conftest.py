"""Tiny checkpoints for the tensor-parallel tests (built once per session) and a check that no
rank process outlives a test.

Checkpoints: `llama` (4 query heads, 2 KV heads: 4 ranks replicate KV heads), `qwen2` (qkv
bias, tied embeddings, two safetensors shards), `mistral`, `gptq-act-order` (the llama
weights as GPTQ v2 int4 with act-order `g_idx`, group size 32), `gptq-64` (in order, group size
64: o_proj's K=64 cannot be split over 2 ranks in whole groups), `awq` (AutoAWQ GEMM, group
size 32), and `llama-wide` (hidden 256:
wide enough that int4 quantize-on-load splits whole groups over 2 ranks), `llama-biases`
(biases on every linear: row-parallel biases are added once, after the all-reduce).
"""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import load_test_module

if any(importlib.util.find_spec(name) is None for name in ("transformers", "safetensors")):
    collect_ignore_glob = ["test_*.py"]

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Parts that read one input share their act-order column order, as GPTQ produces.
SHARED_ORDER = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def child_pids() -> set[int]:
    """Processes whose parent is this one (Linux /proc; empty elsewhere), except
    multiprocessing's resource tracker, which lives as long as this process by design."""
    me, out = os.getpid(), set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z" and b"resource_tracker" not in command:
            out.add(int(entry.name))
    return out


@pytest.fixture(autouse=True)
def _no_rank_left_behind():
    before = child_pids()
    yield
    left = child_pids() - before
    assert not left, f"processes left behind by the test: {sorted(left)}"


def _save(model, path: Path, shard=None) -> Path:
    import fastcot.models

    hf = load_test_module("models/hf_checkpoints.py")
    hf.save_checkpoint(model, path, shard)
    fastcot.models.load_tokenizer("tiny-random").save_pretrained(str(path))
    return path


def _save_gptq(hf_model, path: Path, group_size: int = 32, act_order: bool = True) -> Path:
    """`hf_model` with every decoder linear stored as GPTQ v2 int4, act-order (a shuffled
    g_idx) or in order."""
    from safetensors.torch import save_file

    import fastcot
    from fastcot.quant import Int4Weight
    from fastcot.quant.importers import to_gptq

    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    orders = {}
    for name in [n for n in state if n.endswith(tuple(f"{p}.weight" for p in LINEARS))]:
        prefix = name.removesuffix(".weight")
        part = prefix.rpartition(".")[2]
        w = state.pop(name)
        key = (prefix.rpartition(".")[0], SHARED_ORDER.get(part, part))
        order = torch.randperm(w.shape[1], generator=gen) if act_order else torch.arange(w.shape[1])
        perm = orders.setdefault(key, order.to(torch.int32))
        stored = fastcot.quantize_int4(w[:, perm.long()].half(), group_size=group_size)
        weight = Int4Weight(qweight=stored.qweight, scales=stored.scales, zeros=stored.zeros,
                            perm=perm if act_order else None,
                            group_size=group_size, shape=stored.shape)
        state.update({f"{prefix}.{k}": v for k, v in to_gptq(weight).items()})
    path.mkdir()
    save_file(state, path / "model.safetensors")
    config = hf_model.config.to_dict() | {"architectures": [type(hf_model).__name__], "dtype": "float16"}
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": False,
                                     "desc_act": act_order, "checkpoint_format": "gptq_v2"}
    (path / "config.json").write_text(json.dumps(config))
    import fastcot.models

    fastcot.models.load_tokenizer("tiny-random").save_pretrained(str(path))
    return path


def _save_awq(hf_model, path: Path, group_size: int = 32) -> Path:
    """`hf_model` with every decoder linear stored as AutoAWQ GEMM int4."""
    from safetensors.torch import save_file

    import fastcot
    import fastcot.models
    from fastcot.kernels import reference

    formats = load_test_module("quant/formats.py")
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    for name in [n for n in state if n.endswith(tuple(f"{p}.weight" for p in LINEARS))]:
        prefix = name.removesuffix(".weight")
        stored = fastcot.quantize_int4(state.pop(name).half(), group_size=group_size)
        q = reference.unpack_int4_rows(stored.qweight)
        qweight, qzeros = formats.pack_awq(q, stored.zeros.round().int())
        state.update({f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros, f"{prefix}.scales": stored.scales})
    path.mkdir()
    save_file(state, path / "model.safetensors")
    config = hf_model.config.to_dict() | {"architectures": [type(hf_model).__name__], "dtype": "float16"}
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size,
                                     "zero_point": True, "version": "gemm"}
    (path / "config.json").write_text(json.dumps(config))
    fastcot.models.load_tokenizer("tiny-random").save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tp_checkpoints(tmp_path_factory) -> dict[str, Path]:
    hf = load_test_module("models/hf_checkpoints.py")
    root = tmp_path_factory.mktemp("tp")
    out = {}
    for name in ("llama", "qwen2", "mistral", "llama-biases"):
        config_class, fields, shard = hf.VARIANTS[name]
        model = hf.make_hf_model(config_class, **fields)
        out[name] = _save(model, root / name, shard)
        if name == "llama":
            out["gptq-act-order"] = _save_gptq(model, root / "gptq-act-order")
            out["gptq-64"] = _save_gptq(model, root / "gptq-64", group_size=64, act_order=False)
            out["awq"] = _save_awq(model, root / "awq")
    wide = hf.make_hf_model("LlamaConfig", hidden_size=256, intermediate_size=512, tie_word_embeddings=False)
    out["llama-wide"] = _save(wide, root / "llama-wide")
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
