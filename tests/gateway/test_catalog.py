"""The model catalog: a known model never waits for the store; an unknown one does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import ModelNotFound
from llmos.gateway import catalog as catalog_module
from llmos.gateway.catalog import Catalog
from llmos.store import Deployment, Store


class CountingStore:
    """A real store that counts its reads and can be made to fail."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0
        self.fail = False

    def list_deployments(self, project: str | None = None) -> list[Deployment]:
        self.reads += 1
        if self.fail:
            raise RuntimeError("database is locked")
        return self.store.list_deployments(project)

    @property
    def replicas(self) -> object:
        return self.store.replicas


@pytest.fixture
def store(tmp_path: Path) -> Any:
    real = Store(f"sqlite:///{tmp_path / 'llmos.db'}")
    real.migrate()
    real.upsert_deployment("a", "a")
    yield CountingStore(real)
    real.close()


@pytest.fixture(autouse=True)
def short_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "_TTL_S", 0.05)
    monkeypatch.setattr(catalog_module, "_MIN_FORCED_REFRESH_S", 0.0)
    monkeypatch.setattr(catalog_module, "_REFRESH_DELAY_S", 0.02)


@pytest.mark.asyncio
async def test_a_stale_cache_answers_at_once_and_refreshes_a_moment_later(
        store: CountingStore) -> None:
    catalog = Catalog(store)  # type: ignore[arg-type]
    assert (await catalog.get("a")).name == "a"
    assert store.reads == 1
    store.store.upsert_deployment("a", "a-v2")
    await asyncio.sleep(0.06)  # stale now
    assert (await catalog.get("a")).model_ref == "a"  # the cached row, no read on the path
    assert store.reads == 1
    await asyncio.sleep(0.1)  # the background refresh ran
    assert store.reads == 2
    assert (await catalog.get("a")).model_ref == "a-v2"
    await catalog.close()


@pytest.mark.asyncio
async def test_an_unknown_model_reads_the_store_at_once(store: CountingStore) -> None:
    catalog = Catalog(store)  # type: ignore[arg-type]
    await catalog.get("a")
    store.store.upsert_deployment("b", "b")  # created a moment ago
    assert (await catalog.get("b")).name == "b"
    with pytest.raises(ModelNotFound, match="served models: a, b"):
        await catalog.get("c")
    await catalog.close()


@pytest.mark.asyncio
async def test_a_failed_background_refresh_keeps_serving_the_cache(
        store: CountingStore, caplog: pytest.LogCaptureFixture) -> None:
    catalog = Catalog(store)  # type: ignore[arg-type]
    await catalog.get("a")
    store.fail = True
    await asyncio.sleep(0.06)
    assert (await catalog.get("a")).name == "a"
    await asyncio.sleep(0.1)
    assert store.reads == 2
    assert "could not refresh the model catalog: database is locked" in caplog.text
    assert (await catalog.get("a")).name == "a"
    await catalog.close()


@pytest.mark.asyncio
async def test_close_cancels_a_scheduled_refresh(store: CountingStore) -> None:
    catalog = Catalog(store)  # type: ignore[arg-type]
    await catalog.get("a")
    await asyncio.sleep(0.06)
    await catalog.get("a")  # schedules a refresh
    await catalog.close()
    await asyncio.sleep(0.05)
    assert store.reads == 1
