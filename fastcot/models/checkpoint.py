"""Finding a checkpoint's files and checking them before any weight is read.

Each error names the file (or directory) at fault and says what to do about it:

- a name that is neither a directory nor a preset: a Hugging Face Hub id gets the command that
  downloads it (fastcot never downloads), a near-miss of a preset gets the preset's name;
- a directory without config.json (an HF cache folder gets the path of its snapshot);
- JSON that does not parse: the file, and the line and column of the error;
- weights: a shard that `model.safetensors.index.json` lists but the directory lacks, a shard
  that is truncated or a Git LFS pointer, PyTorch pickle weights (`pytorch_model.bin`) with the
  command that converts them to safetensors;
- tokenizer files missing; `transformers` or `safetensors` not installed (the `fastcot[models]`
  extra).

Missing files and directories raise FileNotFoundError, unreadable or unsupported content
ValueError, missing packages ImportError.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
MODELS_EXTRA = "pip install 'fastcot[models]'"
# A Hub id is "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth")
_LFS_POINTER = b"version https://git-lfs"


def require(package: str, purpose: str):
    """Import `package`, or raise ImportError saying that `purpose` needs it and how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] == package:
            raise ImportError(f"{purpose} needs the {package!r} package, which is not installed: "
                              f"{MODELS_EXTRA}") from err
        raise ImportError(f"{purpose} needs the {package!r} package, which is installed but fails to import "
                          f"({err}); reinstall it: {MODELS_EXTRA}") from err


def checkpoint_dir(name_or_path) -> Path:
    """The checkpoint directory `name_or_path` names (a preset is the caller's business)."""
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"model must be a directory path or a preset name, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from fastcot.models.presets import PRESETS

    presets = ", ".join(PRESETS)
    if path.exists():
        raise NotADirectoryError(f"model {str(name_or_path)!r} is a file; pass the directory that holds its "
                                 "config.json, *.safetensors and tokenizer files")
    name = str(name_or_path)
    close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.8)
    if close:
        raise FileNotFoundError(f"model {name!r} is neither a directory nor a preset; did you mean the preset "
                                f"{close[0]!r}? (presets: {presets})")
    if _HUB_ID.match(name):
        local = name.split("/")[1]
        raise FileNotFoundError(
            f"model {name!r} is not a local directory; fastcot loads local checkpoints and does not download. "
            f"If it is a Hugging Face Hub id, download it first with `huggingface-cli download {name} "
            f"--local-dir {local}` (or `hf download {name} --local-dir {local}`), then pass {local!r}"
        )
    raise FileNotFoundError(f"model {name!r} not found: no directory {str(path.resolve())!r} and no preset of that "
                            f"name (presets: {presets})")


def read_json(file: Path) -> dict:
    """A JSON object from `file`; ValueError naming the file and where it stops parsing."""
    try:
        data = json.loads(file.read_bytes())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} "
                         f"(character {err.pos}); it is corrupt or cut short: fix it or download it again") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text ({err}); it is corrupt: download it again") from err
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, got a {type(data).__name__}")
    return data


def config_file(path: Path) -> Path:
    """`path/config.json`, or FileNotFoundError saying what the directory looks like instead."""
    file = path / "config.json"
    if file.is_file():
        return file
    hint = ""
    snapshots = sorted(p for p in (path / "snapshots").glob("*") if (p / "config.json").is_file())
    inner = sorted(p for p in path.glob("*/config.json"))
    if snapshots:
        hint = f"; it looks like a Hugging Face cache folder: pass its snapshot {str(snapshots[-1])!r}"
    elif len(inner) == 1:
        hint = f"; did you mean {str(inner[0].parent)!r}?"
    elif not any(path.iterdir()):
        hint = "; the directory is empty"
    raise FileNotFoundError(f"no config.json in {str(path)!r}: a checkpoint directory holds config.json, the "
                            f"weights (*.safetensors) and the tokenizer files{hint}")


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's weight files: the shards `model.safetensors.index.json` lists, else every
    `*.safetensors` in `path`."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map' (or an empty one); it is corrupt: download it again")
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            shown = ", ".join(map(repr, missing[:3])) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"{index} lists the shard{'s' if len(missing) > 1 else ''} {shown}, missing from {str(path)!r}: the "
                "download is incomplete; download the missing shards again (`huggingface-cli download` resumes)"
            )
        return [path / name for name in names]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted({p.name for pattern in _PICKLE_WEIGHTS for p in path.glob(pattern)})
    if pickles:
        raise ValueError(
            f"{str(path)!r} holds PyTorch pickle weights ({', '.join(pickles[:3])}) and no *.safetensors; fastcot "
            "loads safetensors only. Convert them (transformers needed): python -c \"import transformers as t; "
            f"t.AutoModelForCausalLM.from_pretrained({str(path)!r}, torch_dtype='auto')"
            f".save_pretrained({str(path)!r})\""
        )
    present = sorted(p.name for p in path.iterdir())
    listing = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
    raise FileNotFoundError(f"no weights in {str(path)!r}: no *.safetensors files (it holds: {listing or 'nothing'})")


def read_headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """Tensor name -> (file, shape, safetensors dtype name), from the files' headers only.
    A file that is truncated, corrupt or a Git LFS pointer raises ValueError naming it."""
    safetensors = require("safetensors", "reading *.safetensors weights")
    headers = {}
    for file in files:
        try:
            with safetensors.safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name in headers:
                        raise ValueError(f"tensor {name!r} appears in both {headers[name][0].name} and {file.name}")
                    tensor_slice = f.get_slice(name)
                    headers[name] = (file, tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
        except safetensors.SafetensorError as err:
            raise ValueError(_unreadable_shard(file, err)) from err
    return headers


def _unreadable_shard(file: Path, err: Exception) -> str:
    listed = f" (listed in {INDEX_FILE})" if (file.parent / INDEX_FILE).is_file() else ""
    with open(file, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        return (f"{file}{listed} is a Git LFS pointer, not the weights: run `git lfs pull` in {str(file.parent)!r}, "
                "or download the checkpoint with `huggingface-cli download`")
    return (f"{file}{listed} is not a readable safetensors file ({err}, {file.stat().st_size} bytes): it is "
            "truncated or corrupt, e.g. an interrupted download; download it again")


def check_tokenizer_files(path: Path) -> None:
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {str(path)!r} (looked for {', '.join(TOKENIZER_FILES)}): copy them from where "
            f"the checkpoint came from, e.g. `huggingface-cli download ID tokenizer.json tokenizer_config.json "
            f"--local-dir {path}`"
        )
