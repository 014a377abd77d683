"""A gateway app on an in-process bus, started (its lifespan) and reached over ASGI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

from llmos.bus import Bus
from llmos.bus.memory import MemoryBus
from llmos.gateway.app import create_app
from llmos.settings import Settings
from llmos.store import Store


@contextlib.asynccontextmanager
async def running(settings: Settings, store: Store, *, bus: Bus | None = None,
                  **options: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """On ``bus`` (connected; the caller closes it), or on a bus of its own."""
    own = bus is None
    if bus is None:
        bus = MemoryBus()
        await bus.connect()
    app = create_app(settings, bus, store, **options)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://localhost",
                timeout=30) as client:
            yield app, client
    finally:
        if own:
            await bus.close()


async def knows_key(client: httpx.AsyncClient, *tokens: str) -> bool:
    """Whether the gateway takes each of these keys yet (one made in the store, not
    through a gateway, shows within ``auth.RELOAD_INTERVAL_S``):
    ``await eventually(lambda: knows_key(client, token))``."""
    for token in tokens:
        answer = await client.get("/api/whoami", headers={"authorization": f"Bearer {token}"})
        # (Before it knows any key, a gateway on loopback is open: 200 with no key id.)
        if answer.status_code != 200 or not answer.json().get("key_id"):
            return False
    return True
