"""A full deployment queue answers 429 with Retry-After instead of queueing without bound."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from llmos.bus import QueueOptions, names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Heartbeat
from llmos.gateway.app import create_app
from llmos.settings import Settings
from llmos.store import Store


@pytest.mark.asyncio
async def test_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    bus = MemoryBus()
    await bus.connect()
    # No worker consumes, and the queue holds two requests (the real limit is larger).
    await bus.declare_queue(names.infer_queue("m"), QueueOptions(max_length=2))
    app = create_app(settings, bus, store)
    # a live replica of "m" as far as the gateway knows (none consumes the queue)
    app.state.gateway.workers.directory.observe(Heartbeat(
        worker_id="w", epoch="e", deployment="m", host="h", slots=1, busy=1, draining=False,
        sent_at=time.time() + 3600, interval_s=5))
    body = {"model": "m", "prompt": "x", "max_tokens": 1}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        waiting = [asyncio.create_task(client.post("/v1/completions", json=body))
                   for _ in range(2)]
        await asyncio.sleep(0.2)
        # (the readiness probe of the default model does not touch this queue)
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["code"] == "queue_full"
        assert error["type"] == "rate_limit_error"
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    await bus.close()
    store.close()
