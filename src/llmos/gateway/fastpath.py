"""The inference endpoints, reached without the router and dependency machinery.

Between the ASGI call and the endpoint, Starlette's exception middleware, the
router's route matching and FastAPI's dependency solving cost about a quarter of
a millisecond per request here: a twentieth of what one client's first token may
lose to LLMOS over llama.cpp's own server. This middleware sends the exact
(method, path) pairs of the hot endpoints straight to their functions, and
turns what they raise into the responses the app's exception handlers give.
Every other request, and the OpenAPI schema, still go through FastAPI, where the
same functions are registered as ordinary routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llmos.gateway.auth import check
from llmos.gateway.state import GatewayState

Endpoint = Callable[[Request, GatewayState], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class FastRoutes:
    def __init__(self, app: ASGIApp, *, routes: Mapping[tuple[str, str], Endpoint],
                 handlers: Mapping[type[Exception], ErrorHandler],
                 state: GatewayState) -> None:
        self.app = app
        self.routes = dict(routes)
        self.handlers = dict(handlers)
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (self.routes.get((scope["method"], scope["path"]))
                    if scope["type"] == "http" else None)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            check(scope, endpoint)
            response = await endpoint(request, self.state)
        except Exception as exc:
            response = await self._handler(exc)(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> ErrorHandler:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        raise exc
