"""The browser guard, through the real app: no web page can drive the server or read it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmos.bus.memory import MemoryBus
from llmos.gateway.app import create_app
from llmos.gateway.guard import HostPolicy, host_name
from llmos.settings import Settings
from llmos.store import Store

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client(tmp_path: Path) -> Client:
    @asynccontextmanager
    async def open_client(base_url: str = "http://127.0.0.1:8000",
                          **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
        config = Settings(home=tmp_path, **settings)
        store = Store(config.db_url)
        store.migrate()
        bus = MemoryBus()
        await bus.connect()
        app = create_app(config, bus, store)
        try:
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url=base_url) as c:
                yield c
        finally:
            await bus.close()
            store.close()

    return open_client


def error_code(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    code: str = error["code"]
    return code


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8000", "localhost"), ("[::1]:8000", "::1"), ("127.0.0.1", "127.0.0.1"),
    ("LLMOS.Example.COM.", "llmos.example.com"), ("[fe80::1]", "fe80::1")])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_host_policy() -> None:
    policy = HostPolicy("127.0.0.1", ["llmos.example.com"])
    for ok in ("localhost:8000", "127.0.0.1:8000", "[::1]:1", "10.1.2.3", "app.localhost",
               "llmos.example.com:443", None):
        assert policy.allows(ok), ok
    for bad in ("evil.example", "evil.example:8000", "localhost.evil.example",
                "llmos.example.com.evil"):
        assert not policy.allows(bad), bad
    assert HostPolicy("gpu-box", []).allows("gpu-box:8000")
    assert HostPolicy("127.0.0.1", ["*"]).allows("anything.example")


@pytest.mark.asyncio
async def test_a_rebinding_host_is_refused_even_for_reads(client: Client) -> None:
    async with client("http://rebind.evil.example:8000") as c:
        for response in (await c.get("/v1/models"), await c.get("/api/models"),
                         await c.delete("/api/models/gemma-3-270m@1")):
            assert response.status_code == 403
            assert error_code(response) == "forbidden"
            assert "allowed_hosts" in response.json()["error"]["message"]
            assert response.headers["x-request-id"]


@pytest.mark.asyncio
async def test_a_configured_public_name_is_served(client: Client) -> None:
    async with client("http://llmos.example.com", allowed_hosts=["llmos.example.com"]) as c:
        assert (await c.get("/v1/models")).status_code == 200


@pytest.mark.asyncio
async def test_a_cross_site_form_post_is_refused(client: Client) -> None:
    async with client() as c:
        form = {"content-type": "application/x-www-form-urlencoded"}
        cross = await c.post("/v1/completions", content=b'{"model":"m","prompt":"x"}',
                             headers=form | {"origin": "https://evil.example"})
        assert cross.status_code == 403
        assert "cors_origins" in cross.json()["error"]["message"]
        # without an Origin (a non-browser client) the content type alone refuses it
        plain = await c.post("/v1/completions", content=b'{"model":"m","prompt":"x"}',
                             headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        assert error_code(plain) == "unsupported_media_type"
        # a bodiless POST (gc) from a page: the Origin refuses it
        gc = await c.post("/api/registry/gc", headers={"origin": "null"})
        assert gc.status_code == 403
        assert (await c.post("/api/registry/gc")).status_code == 200


@pytest.mark.asyncio
async def test_json_endpoints_take_json_only(client: Client) -> None:
    async with client() as c:
        for path in ("/v1/chat/completions", "/api/models/x/versions", "/api/uploads"):
            response = await c.post(path, content=b"{}",
                                    headers={"content-type": "application/octet-stream"})
            assert response.status_code == 415, path
        blob = await c.post("/api/blobs", content=b"x", headers={"content-type": "text/plain"})
        assert blob.status_code == 415
        raw = await c.post("/api/blobs", content=b"x",
                           headers={"content-type": "application/octet-stream"})
        assert raw.status_code == 201


@pytest.mark.asyncio
async def test_same_origin_and_configured_origins_pass(client: Client) -> None:
    async with client(cors_origins=["https://app.example"]) as c:
        same = await c.get("/v1/models", headers={"origin": "http://127.0.0.1:8000"})
        assert same.status_code == 200
        allowed = await c.get("/v1/models", headers={"origin": "https://app.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        preflight = await c.options("/v1/chat/completions", headers={
            "origin": "https://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,authorization"})
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["access-control-allow-methods"]
        other = await c.options("/v1/chat/completions", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert other.status_code == 403
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_413_at_once(client: Client) -> None:
    limits = {"max_body_bytes": 2048}
    async with client(limits=limits) as c:
        big = b'{"model": "m", "prompt": "' + b"x" * 4096 + b'"}'
        response = await c.post("/v1/completions", content=big,
                                headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert "limits.max_body_bytes" in response.json()["error"]["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted as it comes
            for _ in range(8):
                yield big[:1024]

        streamed = await c.post("/v1/completions", content=chunked(),
                                headers={"content-type": "application/json"})
        assert streamed.status_code == 413


@pytest.mark.asyncio
async def test_state_changing_calls_are_not_reachable_by_get(client: Client) -> None:
    async with client() as c:
        for path in ("/api/registry/gc", "/api/registry/verify", "/api/workers/w/drain",
                     "/api/workers/w/resume", "/api/uploads/u/finish", "/api/blobs",
                     "/v1/completions", "/v1/chat/completions"):
            response = await c.get(path)
            assert response.status_code in (404, 405), path
            assert set(response.json()) == {"error"}
