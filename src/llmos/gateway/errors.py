"""Every error leaves the API in OpenAI's shape: {"error": {message, type, param, code}}."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from llmos.errors import LLMOSError
from llmos.gateway.routing import allowed_methods

log = logging.getLogger(__name__)


def error_body(message: str, type_: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: LLMOSError) -> JSONResponse:
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.retry_after_s:
        headers["retry-after"] = str(exc.retry_after_s)
    return JSONResponse(error_body(exc.message, exc.type, param=exc.param, code=exc.code),
                        status_code=exc.status, headers=headers or None)


def sse_error(exc: LLMOSError) -> bytes:
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    return f"data: {json.dumps(body)}\n\n".encode()


def _field_name(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    methods = allowed_methods(request.app, request.url.path)
    if methods and request.method not in methods:  # a catch-all route's path pattern
        return JSONResponse(error_body("Method Not Allowed", "invalid_request_error",
                                       code="method_not_allowed"), status_code=405,
                            headers={"allow": ", ".join(methods)})
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        detail = ctx.get("error", "") if isinstance(ctx, dict) else ""
        message = f"the request body is not valid JSON: {detail}"
        return JSONResponse(error_body(message.strip(": "), "invalid_request_error",
                                       code="invalid_json"), status_code=400)
    param = _field_name(tuple(first.get("loc", ())))
    kind = first.get("type")
    if kind == "extra_forbidden":
        message = f"unknown parameter {param!r}"
        code = "unknown_parameter"
    elif kind == "missing":
        message = f"missing required parameter {param!r}"
        code = "missing_parameter"
    elif param is None:
        message = f"invalid request body: {first.get('msg')}"
        code = "invalid_value"
    else:
        message = f"invalid value for {param!r}: {first.get('msg')}"
        code = "invalid_value"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JSONResponse(error_body(message, "invalid_request_error", param=param, code=code),
                        status_code=400)


async def _llmos_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LLMOSError)
    return error_response(exc)


class Refused(StarletteHTTPException):
    """An LLMOSError raised where only HTTPExceptions pass unchanged (inside FastAPI's
    body parsing, which turns any other error into a 400)."""

    def __init__(self, error: LLMOSError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, Refused):
        return error_response(exc.error)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    headers = {k.lower(): v for k, v in (getattr(exc, "headers", None) or {}).items()}
    if exc.status_code == 405:  # every method of the path, not only the first route's
        headers["allow"] = ", ".join(allowed_methods(request.app, request.url.path))
    return JSONResponse(error_body(str(exc.detail), type_, code=code),
                        status_code=exc.status_code, headers=headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error",
                                   code="internal_error"), status_code=500)


HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    RequestValidationError: _validation_error,
    LLMOSError: _llmos_error,
    StarletteHTTPException: _http_error,
    Exception: _unexpected,
}
"""Each error class and the response it becomes (the app's and the fast routes' handlers)."""


def install_error_handlers(app: FastAPI) -> None:
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
