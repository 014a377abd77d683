"""The fast routes: the hot endpoints skip the router, and answer errors as the app does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from llmos.bus.memory import MemoryBus
from llmos.errors import BadRequest, LLMOSError
from llmos.gateway.app import create_app
from llmos.gateway.auth import requires
from llmos.gateway.fastpath import FastRoutes
from llmos.gateway.routes import health, openai
from llmos.settings import Settings
from llmos.store import Store


async def inner_app(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("inner")(scope, receive, send)


@requires(None)
async def fast(request: Request, state: Any) -> Response:
    return PlainTextResponse(f"fast {state}")


@requires(None)
async def fails(request: Request, state: Any) -> Response:
    raise BadRequest("no good", param="x")


@requires(None)
async def breaks(request: Request, state: Any) -> Response:
    raise KeyError("oops")


async def on_llmos(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMOSError)
    return JSONResponse({"handled": exc.message, "param": exc.param}, status_code=exc.status)


async def on_any(request: Request, exc: Exception) -> Response:
    return JSONResponse({"unexpected": type(exc).__name__}, status_code=500)


def client(handlers: dict[type[Exception], Any]) -> httpx.AsyncClient:
    app = FastRoutes(inner_app, routes={("POST", "/fast"): fast, ("POST", "/fails"): fails,
                                        ("POST", "/breaks"): breaks},
                     handlers=handlers, state="S")  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.mark.asyncio
async def test_exact_method_and_path_go_to_the_endpoint_the_rest_to_the_app() -> None:
    async with client({Exception: on_any}) as c:
        assert (await c.post("/fast")).text == "fast S"
        assert (await c.get("/fast")).text == "inner"
        assert (await c.post("/fast/")).text == "inner"
        assert (await c.post("/other")).text == "inner"


@pytest.mark.asyncio
async def test_errors_take_the_handler_of_their_nearest_class() -> None:
    async with client({LLMOSError: on_llmos, Exception: on_any}) as c:
        response = await c.post("/fails")
        assert response.status_code == 400
        assert response.json() == {"handled": "no good", "param": "x"}
        response = await c.post("/breaks")
        assert response.status_code == 500
        assert response.json() == {"unexpected": "KeyError"}


def test_every_fast_route_is_also_a_documented_route_of_the_app(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    app = create_app(settings, MemoryBus(), Store(settings.db_url))
    paths = app.openapi()["paths"]
    for (method, path), endpoint in openai.FAST_ROUTES.items():
        operation = paths[path][method.lower()]
        assert operation["operationId"].startswith(endpoint.__name__)
        assert "requestBody" in operation


@pytest.mark.asyncio
async def test_a_scrape_takes_the_fast_route_and_gets_the_exposition(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    app = create_app(settings, MemoryBus(), Store(settings.db_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://localhost") as c:
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE llmos_worker_busy_slots gauge" in response.text
    assert response.headers["x-request-id"]
    assert ("GET", "/metrics") in health.FAST_ROUTES
