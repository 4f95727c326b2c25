"""`fastcot serve MODEL`: argument parsing and startup of the OpenAI-compatible server.

Nothing here imports FastAPI or the engine until the server starts, so `fastcot --help` works
without the `serve` extra.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXTRA_HINT = "fastcot serve needs the server extra: pip install 'fastcot[serve]'"


def add_parser(sub) -> argparse.ArgumentParser:
    """The `serve` sub-command of `fastcot`'s parser."""
    serve = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (chat/completions, completions, models, health, metrics)",
        description="Serve MODEL over an OpenAI-compatible HTTP API. Binds 127.0.0.1 unless --host says otherwise.",
    )
    add_arguments(serve)
    return serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a local Hugging Face directory, a GGUF file or a preset (e.g. tiny-random)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    server.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, shown in the log)")
    server.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on the /v1 routes")
    server.add_argument("--served-model-name", nargs="+", default=None,
                        help="model name(s) clients must send (default: MODEL as given)")
    server.add_argument("--max-n", type=int, default=16, help="largest `n` a request may ask for")
    server.add_argument("--max-request-bytes", type=int, default=8 * 2**20, help="largest request body")
    server.add_argument("--keepalive", type=float, default=5.0,
                        help="seconds between SSE keep-alive comments while a stream has nothing to send")
    server.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    engine = parser.add_argument_group("engine")
    engine.add_argument("--quantization", choices=["int4", "gptq", "awq"], default=None)
    engine.add_argument("--dtype", default="auto")
    engine.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "float16", "bfloat16"])
    engine.add_argument("--device", default=None)
    engine.add_argument("--max-model-len", type=int, default=None)
    engine.add_argument("--max-num-seqs", type=int, default=256)
    engine.add_argument("--max-num-batched-tokens", type=int, default=8192)
    engine.add_argument("--block-size", type=int, default=16)
    engine.add_argument("--num-kv-blocks", type=int, default=None)
    engine.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                        help="split the model over this many GPUs (CPU: processes); see docs/tensor_parallel.md")
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="fraction of GPU memory for weights and KV cache (default 0.9)")
    engine.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    engine.add_argument("--generation-config", default="auto", choices=["auto", "vllm"],
                        help="auto: sampling defaults from the checkpoint's generation_config.json; vllm: the "
                             "library's")
    engine.add_argument("--enforce-eager", action="store_true")
    engine.add_argument("--seed", type=int, default=0)
    engine.add_argument("--thinking-delimiters", nargs=2, metavar=("START", "END"), default=None,
                        help="a reasoning model's thinking delimiters (default: found in the tokenizer)")
    engine.add_argument("--speculative-tokens", type=int, default=0,
                        help="speculative decoding with at most this many draft tokens per step (0: off, or "
                             "the method's default with --speculative-method)")
    engine.add_argument("--speculative-method", choices=("ngram", "suffix"), default=None,
                        help="where drafts come from: n-gram lookup (default) or suffix decoding over the "
                             "request's text and earlier outputs (docs/engine.md)")


def engine_kwargs(args) -> dict:
    """The engine's constructor arguments from the parsed options."""
    from fastcot.engine.speculative import cli_config

    kwargs = dict(quantization=args.quantization, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                  device=args.device, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
                  num_kv_blocks=args.num_kv_blocks, enforce_eager=args.enforce_eager, seed=args.seed,
                  gpu_memory_utilization=args.gpu_memory_utilization,
                  enable_prefix_caching=args.enable_prefix_caching, generation_config=args.generation_config,
                  tensor_parallel_size=args.tensor_parallel_size)
    if args.thinking_delimiters is not None:
        kwargs["thinking_delimiters"] = tuple(args.thinking_delimiters)
    speculative = cli_config(args.speculative_tokens, args.speculative_method)
    if speculative is not None:
        kwargs["speculative_config"] = speculative
    return kwargs


def run(args) -> int:
    """Load the model, then serve until interrupted."""
    try:
        import uvicorn

        from fastcot.entrypoints.app import create_app
    except ImportError as exc:
        print(f"{EXTRA_HINT} ({exc})", file=sys.stderr)
        return 2
    if not 0 <= args.port < 65536:
        print(f"fastcot serve: --port must be in [0, 65535] (0: any free port), got {args.port}", file=sys.stderr)
        return 2
    for name in ("max_n", "max_request_bytes"):
        if getattr(args, name) < 1:
            print(f"fastcot serve: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fastcot serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastcot serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
