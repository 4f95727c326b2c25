"""Command line: `fastcot info` (also `python -m fastcot info`)."""

from __future__ import annotations

import argparse
import json
import platform
import sys


def collect_info() -> dict:
    """Versions, device, extension status and the backend each op resolves to."""
    import numpy
    import torch

    import fastcot
    from fastcot import ops
    from fastcot.kernels import cuda
    from fastcot.ops import _backend

    try:
        import triton

        triton_version = triton.__version__
    except ImportError as e:
        triton_version = f"not importable ({e})"

    if torch.cuda.is_available():
        device = torch.device("cuda")
        props = torch.cuda.get_device_properties(device)
        device_desc = f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs)"
    else:
        device = torch.device("cpu")
        device_desc = "cpu (no CUDA device visible to torch)"

    backends = {}
    for op in ops.OPS:
        try:
            backends[op] = _backend.resolve(op, device)
        except _backend.BackendError as e:
            backends[op] = f"error: {e}"

    return {
        "fastcot": fastcot.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "numpy": numpy.__version__,
        "device": device_desc,
        "triton_interpreter": _backend.triton_interpreter_enabled(),
        "cuda_extension": _extension_status(cuda),
        "cuda_extension_build": cuda.build_info(),
        "requested_backend": _backend.requested_backend(),
        "backends": backends,
    }


def _extension_status(cuda) -> str:
    if cuda.available():
        return "loaded"
    if cuda.loaded():
        return f"loaded, cannot run kernels: {cuda.unavailable_reason()}"
    return f"not loaded: {cuda.unavailable_reason()}"


def _print_info(info: dict) -> None:
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backends":
            print(f"{'backends':<{width}}  (op -> implementation on {info['device'].split(' ')[0]})")
            for op, name in value.items():
                print(f"{'':<{width}}    {op}: {name}")
        else:
            print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastcot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device, CUDA extension status, op backends")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    if args.command == "info":
        data = collect_info()
        if args.json:
            print(json.dumps(data, indent=2, default=str))
        else:
            _print_info(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
