"""`/readyz` says what is served and by whom, as `/v1/models` and `/api/workers` do."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmos.bus.messages import Heartbeat
from llmos.settings import Settings
from llmos.store import Store
from tests.gateway.running import running


def beat(worker_id: str, deployment: str, *, draining: bool = False) -> Heartbeat:
    return Heartbeat(worker_id=worker_id, epoch="e", deployment=deployment, host="h",
                     slots=1, busy=0, draining=draining, sent_at=time.time(), interval_s=5)


@pytest.mark.asyncio
async def test_readyz_follows_the_default_model_from_creation_to_a_worker(
        tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, default_model="m")
    store = Store(settings.db_url)
    store.migrate()
    async with running(settings, store) as (app, client):
        gateway = app.state.gateway

        async def ready() -> tuple[int, dict[str, object]]:
            gateway.catalog.invalidate()
            response = await client.get("/readyz")
            return response.status_code, response.json()

        status, body = await ready()
        assert status == 503 and body["status"] == "starting"
        assert body["detail"] == "the deployment m is not created yet" and body["served"] == {}

        store.upsert_deployment("m", "m")
        store.upsert_deployment("other", "other")
        status, body = await ready()
        assert status == 503 and body["detail"] == "m: no worker has joined yet"
        listed = (await client.get("/v1/models")).json()["data"]
        assert set(body["served"]) == {m["id"] for m in listed} == {"m", "other"}

        gateway.workers.directory.observe(beat("m-1", "m"))
        gateway.workers.directory.observe(beat("m-2", "m", draining=True))
        gateway.workers.directory.observe(beat("o-1", "other"))
        status, body = await ready()
        assert status == 503
        assert body["detail"] == "m: m-1 joined; waiting for the first answer"
        assert body["served"] == {"m": ["m-1"], "other": ["o-1"]}  # (m-2 is draining)

        gateway.ready = True  # (what the probe sets once m answered)
        status, body = await ready()
        assert status == 200 and body == {"status": "ready", "version": body["version"],
                                          "detail": "m answered; served by m-1",
                                          "served": {"m": ["m-1"], "other": ["o-1"]},
                                          "gateway": gateway.dispatcher.gateway_id}
        gateway.workers.directory.observe(beat("m-1", "m", draining=True))
        status, body = await ready()
        assert status == 503 and body["status"] == "unavailable" and body["served"]["m"] == []
    store.close()


@pytest.mark.asyncio
async def test_a_control_plane_is_ready_once_up(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    async with running(settings, store, control_plane=True) as (app, client):
        app.state.gateway.workers.directory.observe(beat("m-1", "m"))
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["detail"] == ("control plane: 1 deployments, 1 workers "
                                             "taking requests")
        assert response.json()["served"] == {"m": ["m-1"]}
    store.close()
