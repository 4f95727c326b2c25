"""Server-sent events as OpenAI streams them: `data: {json}\n\n` per chunk, `data: [DONE]` at
the end, and comment lines (ignored by every SSE client) to keep an idle connection open."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel
from starlette.responses import StreamingResponse

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"


def event(chunk: BaseModel | str) -> str:
    """One SSE event; a model is sent as JSON without its None fields, as OpenAI's chunks are."""
    data = chunk if isinstance(chunk, str) else chunk.model_dump_json(exclude_none=True)
    return f"data: {data}\n\n"


class EventStreamResponse(StreamingResponse):
    """An SSE response that, however it ends (done, client gone while an event was being sent,
    cancelled before the first event), closes its event generator and calls `on_close` (which
    aborts what is unfinished) right then, not whenever the generator is garbage collected."""

    def __init__(self, events, on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self._on_close()
