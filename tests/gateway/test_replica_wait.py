"""How long a request waits for a replica follows the store, not a stale cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from llmos.bus import names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Heartbeat
from llmos.settings import Settings
from llmos.store import Store
from llmos.store.tables import Replica
from llmos.worker.presence import Presence
from tests.gateway.running import running


def _starting(tmp_path: Path, no_replica_wait_s: float,
              starting_replica_wait_s: float) -> tuple[Settings, Store]:
    """A store with deployment m, whose one replica (m-1) is starting, and no worker."""
    settings = Settings(home=tmp_path, limits={
        "no_replica_wait_s": no_replica_wait_s,
        "starting_replica_wait_s": starting_replica_wait_s})
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    store.replicas.add(Replica(id="m-1", deployment="m", node="n", generation=1,
                               model_version="m@1", engine_settings={}, reserved={},
                               state="starting", rss=0, restarts=0))
    return settings, store


async def _ask(app: FastAPI, client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    """A completion for m from a gateway past its start's grace; the answer, and how long
    it took."""
    app.state.gateway.workers._listening_since -= 60
    started = time.monotonic()
    answer = await client.post("/v1/completions", json={
        "model": "m", "prompt": "x", "max_tokens": 1})
    return answer, time.monotonic() - started


@pytest.mark.asyncio
async def test_a_replica_seen_starting_before_a_quiet_spell_does_not_hold_a_request(
        tmp_path: Path) -> None:
    """The catalog answers from its cache and refreshes behind it. A replica that was
    starting when the gateway last looked is ready (or drained) by now: a request that
    finds no replica serving waits ``no_replica_wait_s``, not ``starting_replica_wait_s``."""
    settings, store = _starting(tmp_path, 0.2, 30)
    async with running(settings, Store(settings.db_url)) as (app, client):
        catalog = app.state.gateway.catalog
        deployment = await catalog.get("m")
        assert catalog.starting(deployment)  # what it read then
        async with catalog._reading:  # (no read of the store in flight meanwhile)
            store.replicas.update("m-1", state="ready")  # later: ready, then drained
            catalog._loaded_at -= 60  # a quiet spell: nothing asked it since
        answer, took = await _ask(app, client)
    store.close()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_replica"
    assert took < 3  # (30 s if it had believed the stale cache)
    assert not catalog.starting(deployment)


@pytest.mark.asyncio
async def test_a_request_waits_longer_while_a_replica_is_starting(tmp_path: Path) -> None:
    settings, store = _starting(tmp_path, 0.1, 1.0)
    async with running(settings, Store(settings.db_url)) as (app, client):
        answer, took = await _ask(app, client)
    store.close()
    assert answer.status_code == 503
    assert 0.9 <= took < 5  # it waited for the replica that is starting, then gave up


@pytest.mark.asyncio
async def test_a_gateway_that_starts_asks_the_workers_to_beat_and_knows_them_at_once(
        tmp_path: Path, bus: MemoryBus) -> None:
    """A worker beats every minute here; a gateway started after its beat knows it at
    once all the same (it asks every worker to beat as it starts), and a request for a
    deployment with no worker waits ``names.ROLL_CALL_WAIT_S`` for one to be heard, not
    a heartbeat interval."""
    def beat() -> Heartbeat:
        return Heartbeat(worker_id="w1", epoch="e1", deployment="m", host="h", slots=1,
                         busy=0, sent_at=time.time(), interval_s=60)

    async def no_command(action: str) -> None:
        raise AssertionError(action)

    presence = Presence(bus, "w1", "e1", 60, beat, no_command)
    await presence.subscribe()
    presence.start_beating()
    settings = Settings(home=tmp_path, limits={"no_replica_wait_s": 0.05})
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("other", "other")
    try:
        await asyncio.sleep(0.1)  # (its first beat is gone by the time the gateway starts)
        async with running(settings, Store(settings.db_url), bus=bus) as (app, client):
            started = time.monotonic()
            assert await app.state.gateway.workers.wait_for_replica("m", 30)
            assert time.monotonic() - started < 0.5
            started = time.monotonic()
            answer = await client.post("/v1/completions", json={
                "model": "other", "prompt": "x", "max_tokens": 1})
            took = time.monotonic() - started
    finally:
        await presence.stop()
        store.close()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_replica"
    assert took < names.HEARTBEAT_INTERVAL_S - 1  # (about ROLL_CALL_WAIT_S)
