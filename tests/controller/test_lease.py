"""The active controller renews its lease every third of its life, not at every pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmos.bus.memory import MemoryBus
from llmos.controller.reconcile import LEASE_RENEW_S, LEASE_TTL_S, Controller
from llmos.registry.defaults import open_registry
from llmos.settings import Settings
from llmos.store import Store


@pytest.mark.asyncio
async def test_the_lease_is_renewed_a_third_of_its_life_after_the_last_renewal(
        tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    now = [1000.0]
    controller = Controller(store, open_registry(settings), MemoryBus(), settings.engine,
                            clock=lambda: now[0])
    renewals: list[float] = []
    acquire = store.leases.acquire

    def counted(*args: Any, **kwargs: Any) -> int | None:
        renewals.append(kwargs["now"])
        return acquire(*args, **kwargs)

    store.leases.acquire = counted  # type: ignore[method-assign]
    for _ in range(4):  # passes a second apart
        await controller.run_once()
        now[0] += 1.0
    assert controller.term == 1 and LEASE_RENEW_S <= LEASE_TTL_S / 2
    assert renewals == [1000.0, 1002.0]  # (held until 1006 and 1008: never at risk)
    lease = store.leases.get("controller")
    assert lease is not None and lease.expires_at == 1002.0 + LEASE_TTL_S
    store.close()
