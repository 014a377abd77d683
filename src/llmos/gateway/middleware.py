"""A pure ASGI middleware (no buffering of streams) that gives every response an
x-request-id, and writes a log line per API request once its response has ended."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos.observability.context import new_request_id, request_id_var

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = logging.getLogger("llmos.gateway.requests")


def note(request: Request, **fields: Any) -> None:
    """Adds fields (deployment, tokens, …) to the request's log line."""
    request.scope.setdefault("state", {}).setdefault("log", {}).update(fields)


def on_end(request: Request, call: Callable[[], None]) -> None:
    """Call ``call`` once the response has ended (sent, failed or cut off)."""
    request.scope.setdefault("state", {}).setdefault("on_end", []).append(call)


def _logged(path: str, status: int) -> bool:
    """Every OpenAI-API request, and any request that failed; not health checks or
    scrapes that succeed (they come every few seconds)."""
    return path.startswith("/v1/") or status >= 400


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _VALID.match(given) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        first_byte: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body" and first_byte is None:
                first_byte = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            for call in state.get("on_end", ()):
                call()
            if _logged(scope["path"], status):
                took = time.perf_counter() - started
                fields = {"method": scope["method"], "path": scope["path"], "status": status,
                          **state.get("log", {}),
                          "first_byte_s": round(first_byte, 4) if first_byte else None,
                          "duration_s": round(took, 4)}
                log.info("%s %s %d in %.3f s", scope["method"], scope["path"], status, took,
                         extra={"event": "request", "fields": fields})
            request_id_var.reset(token)
