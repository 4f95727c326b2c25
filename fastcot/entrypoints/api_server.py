"""The FastAPI application of `fastcot serve`: routes, API key, body limits, error bodies.

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
`GET /metrics`. With an API key, the `/v1` routes need `Authorization: Bearer KEY` (401
otherwise); `/health` and `/metrics` stay open for probes and scrapers. Bodies are read here,
at most `max_request_bytes` (413 beyond), and parsed into the protocol models, so malformed
JSON and invalid fields get OpenAI-style 400s. Any other failure of a handler is a 500 with
an OpenAI-style body and no traceback (the traceback goes to the log).
"""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from fastcot.entrypoints import protocol as p
from fastcot.entrypoints.async_engine import AsyncEngine
from fastcot.entrypoints.errors import APIError, bad_request, from_validation_error
from fastcot.entrypoints.metrics import CONTENT_TYPE, ServerMetrics
from fastcot.entrypoints.serving import Serving

log = logging.getLogger("fastcot.serve")
DRAIN_FACTOR = 4


@dataclass
class ServerOptions:
    api_key: str | None = None
    max_request_bytes: int = 8 * 2**20
    model_path: str | None = None  # shown as `root` in /v1/models


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 if it is longer than `limit`. Up to `DRAIN_FACTOR * limit` bytes of
    an oversized body are read and dropped first, so that the client (still sending) gets the
    413 instead of a reset connection; beyond that the connection is cut short."""
    body, size = bytearray(), 0
    async for part in request.stream():
        size += len(part)
        if size <= limit:
            body += part
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise APIError(f"request body exceeds the limit of {limit} bytes", status=413, code="request_too_large")
    return bytes(body)


def build_app(serving: Serving, metrics: ServerMetrics, options: ServerOptions) -> FastAPI:
    """The application around `serving`; its lifespan starts and stops the engine thread."""
    engine: AsyncEngine = serving.engine

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.shutdown()
            serving.close()

    app = FastAPI(title="fastcot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):  # unknown route, wrong method
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = APIError(str(exc.detail), status=exc.status_code, type=kind)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        log.exception("request to %s failed", request.url.path)
        error = APIError("internal server error", status=500, type="server_error", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise APIError("Incorrect or missing API key: send `Authorization: Bearer <key>`.", status=401,
                           code="invalid_api_key")

    async def parse(request: Request, model: type[BaseModel]) -> BaseModel:
        authorize(request)
        body = await _read_body(request, options.max_request_bytes)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        unknown = parsed.unknown_fields()
        if unknown:
            log.warning("ignoring unknown request fields %s", unknown)
        return parsed

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serving.chat(await parse(request, p.ChatCompletionRequest), request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serving.completion(await parse(request, p.CompletionRequest), request)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        cards = [p.ModelCard(id=name, root=options.model_path or name, max_model_len=serving.limits.max_model_len)
                 for name in serving.served_model_names]
        return JSONResponse(p.ModelList(data=cards).model_dump())

    @app.get("/health")
    async def health():
        if engine.dead is not None:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
