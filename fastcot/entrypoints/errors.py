"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause maps to a 4xx with such a body; nothing reaches the client as
a traceback. `APIError` is raised anywhere in request handling and turned into the response by
the server's exception handler.
"""

from __future__ import annotations

from pydantic import ValidationError

from fastcot.entrypoints.protocol import ErrorInfo, ErrorResponse


class APIError(Exception):
    """A request that cannot be served: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, status=400, param=param, code=code)


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, with the field's dotted path as `param`."""
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    value = first.get("input")
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    where = f"{param}: " if param else ""
    message = f"{where}{first['msg']}" + (f" (got {shown})" if param and first["type"] != "missing" else "")
    return bad_request(message, param=param, code=first["type"])


def server_error(message: str) -> APIError:
    return APIError(message, status=500, type="server_error", code="internal_error")
