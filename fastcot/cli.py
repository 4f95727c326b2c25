"""Command line: `fastcot info | generate | chat | serve | bench` (also `python -m fastcot ...`)."""

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


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-random", help="a local Hugging Face directory or a preset (default tiny-random)")
    p.add_argument("--quantization", choices=["int4", "gptq", "awq"], default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "float16", "bfloat16"])
    p.add_argument("--device", default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--thinking-budget", type=int, default=None,
                   help="reasoning models: most thinking tokens before the answer is forced")
    p.add_argument("--min-thinking-tokens", type=int, default=0,
                   help="reasoning models: an earlier end of thinking is replaced by 'Wait'")
    p.add_argument("--speculative-tokens", type=int, default=0,
                   help="n-gram speculative decoding with this many draft tokens (0: off)")


def _engine(args):
    import fastcot

    speculative = None
    if args.speculative_tokens:
        speculative = {"method": "ngram", "num_speculative_tokens": args.speculative_tokens}
    llm = fastcot.LLM(args.model, quantization=args.quantization, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                      device=args.device, max_model_len=args.max_model_len, num_kv_blocks=args.num_kv_blocks,
                      speculative_config=speculative)
    params = fastcot.SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                    max_tokens=args.max_tokens, seed=args.seed, ignore_eos=args.ignore_eos,
                                    thinking_budget=args.thinking_budget,
                                    min_thinking_tokens=args.min_thinking_tokens)
    return llm, params


def _stream(llm, prompt, params) -> str:
    """Print a completion as it is generated, the thinking section marked; returns the answer."""
    answer, kind = [], "answer"
    for delta in llm.generate_stream(prompt, params):
        if delta.text and delta.kind != kind:
            kind = delta.kind
            print("[thinking]\n" if kind == "reasoning" else "\n[answer]\n", end="", file=sys.stderr, flush=True)
        if delta.kind == "answer":
            answer.append(delta.text)
        print(delta.text, end="", flush=True)
    print()
    return "".join(answer)


def _generate(args) -> int:
    llm, params = _engine(args)
    _stream(llm, args.prompt, params)
    return 0


def _chat(args) -> int:
    llm, params = _engine(args)
    messages = []
    print("fastcot chat: an empty line ends the conversation.", file=sys.stderr)
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = _stream(llm, llm.chat_prompt(messages), params)
        messages.append({"role": "assistant", "content": reply})
    return 0


def main(argv: list[str] | None = None) -> int:
    from fastcot import cli_bench

    argv = sys.argv[1:] if argv is None else list(argv)
    # `fastcot bench NAME ...` hands everything after NAME to the script, --help included.
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in cli_bench.BENCHMARKS:
        return cli_bench.run(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="fastcot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device, CUDA extension status, op backends")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    gen = sub.add_parser("generate", help="generate from a prompt, streaming to the terminal")
    gen.add_argument("--prompt", required=True)
    _add_engine_args(gen)
    chat = sub.add_parser("chat", help="chat on stdin/stdout with the model's chat template")
    _add_engine_args(chat)
    cli_bench.add_parser(sub)
    from fastcot.entrypoints import serve
    serve.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "generate":
        return _generate(args)
    if args.command == "chat":
        return _chat(args)
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
