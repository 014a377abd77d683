"""Rate limits and usage at the gateway: 429s in OpenAI's shape with Retry-After and the
x-ratelimit-* headers, per key and per project, held across two gateways."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis

from llmos.aio import stop_task
from llmos.auth.roles import Role
from llmos.gateway import metering
from llmos.gateway.auth import KeyBook
from llmos.gateway.metering import UsageBook
from llmos.settings import Settings
from llmos.store import Store
from tests.conftest import require_service
from tests.gateway.running import knows_key, running
from tests.waiting import eventually

BODY = {"model": "m", "prompt": "x", "max_tokens": 4}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


COUNTERS_URL = "redis://127.0.0.1:6379/13"
"""A Redis database of these tests' own (emptied before each)."""


@pytest_asyncio.fixture(params=["store", "redis"])
async def gateways(request: pytest.FixtureRequest, tmp_path: Path, keys_seen_soon: None,
                   monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[tuple[list[httpx.AsyncClient], Store]]:
    """Two gateways on one store (no replica: requests are counted, then 503), sharing
    their counts through the store or through Redis: every 0.5 s, even while no limit is
    set (then 5 s by default), so the usage a test makes is recorded soon."""
    monkeypatch.setattr(metering, "UNLIMITED_SYNC_INTERVAL_S", metering.SYNC_INTERVAL_S)
    counters: dict[str, str] = {}
    if request.param == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        client = redis.Redis.from_url(COUNTERS_URL)
        client.flushdb()
        client.close()
        counters = {"counters_url": COUNTERS_URL}
    settings = Settings(home=tmp_path, limits={"no_replica_wait_s": 0.05}, **counters)
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            _, client = await stack.enter_async_context(
                running(settings, Store(settings.db_url)))
            clients.append(client)
        yield clients, store
    store.close()


async def refreshed(clients: list[httpx.AsyncClient], token: str) -> None:
    """Until each gateway takes the key (with the key, its project's limits are loaded)."""
    for client in clients:
        await eventually(functools.partial(knows_key, client, token), what="the key known")


@pytest.mark.asyncio
async def test_a_key_over_its_rate_gets_a_429_others_do_not(
        gateways: tuple[list[httpx.AsyncClient], Store]) -> None:
    (first, _), store = gateways
    _, limited = store.keys.create("limited", Role.user, "default", now=time.time(),
                                   limits={"rpm": 2})
    _, free = store.keys.create("free", Role.user, "default", now=time.time())
    await refreshed([first], limited)
    for _ in range(2):
        answer = await first.post("/v1/completions", json=BODY, headers=bearer(limited))
        assert answer.status_code == 503  # (counted, then no replica)
        assert answer.headers["x-ratelimit-limit-requests"] == "2"
    started = time.monotonic()
    refused = await first.post("/v1/completions", json=BODY, headers=bearer(limited))
    assert refused.status_code == 429
    assert time.monotonic() - started >= 0.9  # held (a flood slows itself), within 1 s
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "2 requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    other = await first.post("/v1/completions", json=BODY, headers=bearer(free))
    assert other.status_code == 503  # not limited
    again = await first.post("/v1/completions", json=BODY, headers=bearer(limited))
    assert again.status_code == 429  # (a refused request is not counted, nor forgotten)


@pytest.mark.asyncio
async def test_limits_hold_across_gateways(
        gateways: tuple[list[httpx.AsyncClient], Store]) -> None:
    (first, second), store = gateways
    store.keys.set_project_limits("default", {"rpm": 3}, time.time())
    _, token = store.keys.create("k", Role.user, "default", now=time.time())
    await refreshed([first, second], token)
    for _ in range(2):
        assert (await first.post("/v1/completions", json=BODY,
                                 headers=bearer(token))).status_code == 503
    await asyncio.sleep(1.2)  # the first gateway's counts reach the store; the second reads
    assert (await second.post("/v1/completions", json=BODY,
                              headers=bearer(token))).status_code == 503
    refused = await second.post("/v1/completions", json=BODY, headers=bearer(token))
    assert refused.status_code == 429 and "project default" in refused.json()["error"]["message"]


@pytest.mark.asyncio
async def test_a_request_over_the_token_rate_alone_says_to_lower_max_tokens(
        gateways: tuple[list[httpx.AsyncClient], Store]) -> None:
    (first, _), store = gateways
    _, token = store.keys.create("k", Role.user, "default", now=time.time(),
                                 limits={"tpm": 50})
    await refreshed([first], token)
    refused = await first.post("/v1/completions", headers=bearer(token), json=BODY | {
        "max_tokens": 64})
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "lower max_tokens" in refused.json()["error"]["message"]


@pytest.mark.asyncio
async def test_usage_is_recorded_per_key_and_project(
        gateways: tuple[list[httpx.AsyncClient], Store]) -> None:
    (first, _), store = gateways
    _, user = store.keys.create("u", Role.user, "default", now=time.time())
    row, admin = store.keys.create("a", Role.admin, "default", now=time.time())
    await refreshed([first], user)
    await refreshed([first], admin)
    for _ in range(3):
        await first.post("/v1/completions", json=BODY, headers=bearer(user))

    async def recorded() -> list[dict[str, Any]]:  # (the counts reach the store in 0.5 s)
        data: list[dict[str, Any]] = (await first.get("/api/usage", headers=bearer(user))
                                      ).json()["data"]
        return data if [d["requests"] for d in data] == [3] else []

    mine = await eventually(recorded, what="the usage recorded")
    assert [(d["scope"].split(":")[0], d["requests"]) for d in mine] == [("key", 3)]
    every = (await first.get("/api/usage", headers=bearer(admin))).json()["data"]
    assert {d["scope"]: d["requests"] for d in every}["project:default"] == 3
    limits = await first.put("/api/projects/default/limits", headers=bearer(admin),
                             json={"rpm": 100})
    assert limits.status_code == 200
    assert (await first.get("/api/projects/default/limits", headers=bearer(user))
            ).json()["rpm"] == 100
    assert (await first.get("/api/projects/other/limits", headers=bearer(user))
            ).status_code == 404
    changed = await first.patch(f"/api/keys/{row.id}", headers=bearer(admin),
                                json={"limits": {"concurrent": 4}})
    assert changed.json()["limits"]["concurrent"] == 4


class CountingCounters:
    """Counters that only count the exchanges asked of them."""

    keeps_records = True

    def __init__(self) -> None:
        self.exchanges = 0

    def exchange(self, *args: object, **kwargs: object
                 ) -> tuple[dict[tuple[str, str, int], tuple[int, int]], dict[str, int]]:
        self.exchanges += 1
        return {}, {}

    def prune(self, before_minute: int, gone_before: float) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.asyncio
@pytest.mark.parametrize("limited", [True, False])
async def test_counts_are_shared_often_only_while_some_limit_needs_them(
        tmp_path: Path, limited: bool) -> None:
    store = Store(Settings(home=tmp_path).db_url)
    counters = CountingCounters()
    book = UsageBook(store, counters)
    following = asyncio.create_task(book.follow(lambda: limited, interval_s=0.01,
                                                unlimited_interval_s=60))
    await asyncio.sleep(0.3)
    await stop_task(following)
    if limited:
        assert counters.exchanges >= 3
    else:
        assert counters.exchanges == 0
    store.close()


@pytest.mark.asyncio
async def test_a_limit_set_wakes_the_seldom_exchange(tmp_path: Path) -> None:
    store = Store(Settings(home=tmp_path).db_url)
    counters = CountingCounters()
    book = UsageBook(store, counters)
    limited = False
    following = asyncio.create_task(book.follow(lambda: limited, interval_s=0.01,
                                                unlimited_interval_s=60))
    await asyncio.sleep(0.1)
    assert counters.exchanges == 0
    limited = True
    book.limits_changed()  # (the key book calls it when a reload changed the keys)
    await eventually(lambda: counters.exchanges >= 3, timeout_s=2.0,
                     what="frequent exchanges")
    await stop_task(following)
    store.close()


@pytest.mark.asyncio
async def test_a_gateway_hands_its_last_counts_to_the_store_as_it_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metering, "UNLIMITED_SYNC_INTERVAL_S", 3600.0)  # (only the stop)
    settings = Settings(home=tmp_path, limits={"no_replica_wait_s": 0.05})
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    _, user = store.keys.create("u", Role.user, "default", now=time.time())
    async with running(settings, Store(settings.db_url)) as (app, client):
        assert not app.state.gateway.keys.limited()  # (so counts go seldom)
        for _ in range(2):
            await client.post("/v1/completions", json=BODY, headers=bearer(user))
    assert {d.scope.split(":")[0]: d.requests for d in store.usage.days()} == {
        "key": 2, "project": 2}
    store.close()


@pytest.mark.asyncio
async def test_a_key_book_knows_whether_any_limit_is_set(tmp_path: Path) -> None:
    store = Store(Settings(home=tmp_path).db_url)
    store.migrate()
    row, _ = store.keys.create("u", Role.user, "default", now=time.time())
    keys = KeyBook(store)
    keys.refresh()
    assert not keys.limited()
    store.keys.set_limits(row.id, {"rpm": 10}, time.time() + 1)
    keys.refresh()
    assert keys.limited()
    store.keys.set_limits(row.id, {}, time.time() + 2)
    store.keys.set_project_limits("default", {"concurrent": 2}, time.time() + 3)
    keys.refresh()
    assert keys.limited()
    store.close()
