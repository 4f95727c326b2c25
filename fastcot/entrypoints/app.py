"""Build the server: the engine from the command line, its output reader, and the application."""

from __future__ import annotations

from fastapi import FastAPI

from fastcot.entrypoints.api_server import ServerOptions, build_app
from fastcot.entrypoints.async_engine import AsyncEngine
from fastcot.entrypoints.engine_outputs import OutputReader
from fastcot.entrypoints.metrics import ServerMetrics
from fastcot.entrypoints.params import Limits
from fastcot.entrypoints.serve import engine_kwargs
from fastcot.entrypoints.serving import Serving


def create_app(args) -> FastAPI:
    """Load the model named on the command line and build the application around it."""
    from fastcot import LLMEngine, SamplingParams

    engine = LLMEngine(args.model, **engine_kwargs(args))
    return build_server(engine, SamplingParams, served_model_names=args.served_model_name or [args.model],
                        options=ServerOptions(api_key=args.api_key, max_request_bytes=args.max_request_bytes,
                                              model_path=args.model),
                        max_n=args.max_n, keepalive_s=args.keepalive)


def build_server(engine, params_class, *, served_model_names: list[str], options: ServerOptions, max_n: int = 16,
                 keepalive_s: float = 5.0, read_output=None) -> FastAPI:
    """The application serving `engine` (an `LLMEngine`, or anything with its methods).

    `read_output` turns one of the engine's `RequestOutput`s into an `Update`; by default an
    `OutputReader` over the engine's tokenizer."""
    tokenizer = engine.get_tokenizer()
    limits = Limits(max_model_len=engine.max_model_len, max_n=max_n, vocab_size=engine.config.vocab_size)
    async_engine = None
    metrics = ServerMetrics(lambda: async_engine.stats())
    async_engine = AsyncEngine(engine, read_output or OutputReader(tokenizer), metrics=metrics)
    serving = Serving(async_engine, tokenizer, params_class, served_model_names=list(served_model_names),
                      limits=limits, reasoning_model=getattr(engine, "thinking", None) is not None,
                      keepalive_s=keepalive_s, defaults=_sampling_defaults(engine))
    return build_app(serving, metrics, options)


SAMPLING_DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _sampling_defaults(engine) -> dict:
    """The engine's defaults for the sampling fields a request may leave out."""
    get = getattr(engine, "get_default_sampling_params", None)
    if get is None:
        return {}
    params = get()
    return {name: getattr(params, name) for name in SAMPLING_DEFAULT_FIELDS}
