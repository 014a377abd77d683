"""Requests queued for a model whose last replica went away fail fast with a 503."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Heartbeat
from llmos.gateway.app import create_app
from llmos.gateway.stranded import stranded
from llmos.settings import Settings
from llmos.store import Store


def test_the_clock_runs_only_while_no_replica_can_answer() -> None:
    since: dict[str, float] = {}
    alive = {"a": False, "b": True}
    assert stranded(since, 100.0, {"a", "b"}, alive.__getitem__, lambda _: 3.0) == set()
    assert since == {"a": 100.0}
    assert stranded(since, 102.9, {"a", "b"}, alive.__getitem__, lambda _: 3.0) == set()
    assert stranded(since, 103.0, {"a", "b"}, alive.__getitem__, lambda _: 3.0) == {"a"}
    alive["a"] = True  # a replica came back: the clock starts over when it goes again
    assert stranded(since, 104.0, {"a"}, alive.__getitem__, lambda _: 3.0) == set() and since == {}
    alive["a"] = False
    assert stranded(since, 105.0, {"a"}, alive.__getitem__, lambda _: 3.0) == set()
    assert stranded(since, 106.0, set(), alive.__getitem__, lambda _: 3.0) == set() and since == {}


def beat(deployment: str, *, draining: bool, busy: int) -> Heartbeat:
    return Heartbeat(worker_id="w", epoch="e", deployment=deployment, host="h", slots=1,
                     busy=busy, draining=draining, sent_at=time.time(), interval_s=5)


@pytest.mark.asyncio
async def test_a_queued_request_fails_once_the_last_replica_is_drained(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, limits={"no_replica_wait_s": 0.5})
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    bus = MemoryBus()
    await bus.connect()
    app = create_app(settings, bus, store)
    directory = app.state.gateway.workers.directory
    directory.observe(beat("m", draining=False, busy=1))  # serving; nothing consumes
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        queued = asyncio.create_task(client.post("/v1/completions", json={
            "model": "m", "prompt": "x", "max_tokens": 1}, timeout=30))
        await asyncio.sleep(1.5)
        assert not queued.done()  # a replica takes requests: it waits in the queue
        directory.observe(beat("m", draining=True, busy=1))
        await asyncio.sleep(1.5)
        assert not queued.done()  # the drained replica still works: it may be its request
        drained_at = time.monotonic()
        directory.observe(beat("m", draining=True, busy=0))
        response = await asyncio.wait_for(queued, 10)
        assert time.monotonic() - drained_at < 0.5 + 0.5 + 1.0  # wait, one look, slack
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "no_replica"
    await bus.close()
    store.close()
