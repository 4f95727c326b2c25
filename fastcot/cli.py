"""Command line: `fastcot info | generate | chat | serve | bench` (also `python -m fastcot ...`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def collect_info() -> dict:
    """Versions, device, extension status and the backend each op resolves to. Never raises:
    whatever cannot be found out (a bad FASTCOT_BACKEND, a broken install) reads "error: ..."."""
    import torch

    info = {}
    for key, probe in (
        ("fastcot", lambda: __import__("fastcot").__version__),
        ("python", platform.python_version),
        ("torch", lambda: torch.__version__),
        ("torch_cuda", lambda: torch.version.cuda),
        ("triton", _triton_version),
        ("numpy", lambda: __import__("numpy").__version__),
        ("device", _device_description),
        ("triton_interpreter", lambda: _backend().triton_interpreter_enabled()),
        ("pdl", _pdl_status),
        ("cuda_extension", _extension_status),
        ("cuda_extension_build", lambda: _cuda().build_info()),
        ("requested_backend", lambda: _backend().requested_backend()),
        ("backends", _backends),
    ):
        try:
            info[key] = probe()
        except Exception as e:  # a diagnostic tool reports what fails instead of failing
            info[key] = f"error: {type(e).__name__}: {e}"
    return info


def _pdl_status() -> str:
    """Whether the decode kernels (int4, attention, norms, rotary, activation, KV write) launch with
    programmatic dependent launch on this device."""
    import torch

    from fastcot.kernels.pdl import pdl_enabled

    off = " (FASTCOT_PDL=0)" if os.environ.get("FASTCOT_PDL", "1") == "0" else ""
    if not torch.cuda.is_available():
        return f"off: no CUDA device{off}"
    major, minor = torch.cuda.get_device_capability()
    if pdl_enabled(major * 10 + minor):
        return f"on (sm_{major}{minor}; FASTCOT_PDL=0 turns it off)"
    return f"off: sm_{major}{minor}{off or ' (PDL needs sm_90 or later)'}"


def _backend():
    from fastcot.ops import _backend

    return _backend


def _cuda():
    from fastcot.kernels import cuda

    return cuda


def _triton_version() -> str:
    try:
        import triton
    except ImportError as e:
        return f"not importable ({e})"
    return triton.__version__


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_description() -> str:
    import torch

    if _device().type == "cuda":
        props = torch.cuda.get_device_properties(_device())
        return f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs)"
    return "cpu (no CUDA device visible to torch)"


def _backends() -> dict:
    from fastcot import ops

    backends = {}
    for op in ops.OPS:
        try:
            backends[op] = _backend().resolve(op, _device())
        except Exception as e:  # BackendError, or the ValueError of a bad FASTCOT_BACKEND
            backends[op] = f"error: {e}"
    return backends


def _extension_status() -> str:
    cuda = _cuda()
    if cuda.available():
        return "loaded"
    if cuda.loaded():
        return f"loaded, cannot run kernels: {cuda.unavailable_reason()}"
    return f"not loaded: {cuda.unavailable_reason()}"


def _print_info(info: dict) -> None:
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backends" and isinstance(value, dict):
            print(f"{'backends':<{width}}  (op -> implementation on {info['device'].split(' ')[0]})")
            for op, name in value.items():
                print(f"{'':<{width}}    {op}: {name}")
        else:
            print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    from fastcot import cli_bench, cli_chat

    argv = sys.argv[1:] if argv is None else list(argv)
    # `fastcot bench NAME ...` hands everything after NAME to the script, --help included.
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in cli_bench.BENCHMARKS:
        return cli_bench.run(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="fastcot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device, CUDA extension status, op backends")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    for name, help_text in (("generate", "generate from a prompt, streaming to the terminal"),
                            ("chat", "chat on stdin/stdout with the model's chat template")):
        cmd = sub.add_parser(name, help=help_text, description=cli_chat.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        cli_chat.add_arguments(cmd, chat=name == "chat")
    cli_bench.add_parser(sub)
    from fastcot.entrypoints import serve
    serve.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command in ("generate", "chat"):
        try:
            return cli_chat.generate(args) if args.command == "generate" else cli_chat.chat(args)
        except cli_chat.UsageError as e:
            print(f"fastcot {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # while loading, or outside a reply
            print(file=sys.stderr)
            return cli_chat.INTERRUPTED
    if args.command == "serve":
        return serve.run(args)
    data = collect_info()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        _print_info(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
