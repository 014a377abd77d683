"""Fixtures of the gateway tests."""

from __future__ import annotations

import pytest

from llmos.gateway import auth


@pytest.fixture
def keys_seen_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways look at the store's keys every 0.1 s (not every 2 s), for tests that make
    keys in the store directly: one made through a gateway is known everywhere at once,
    one made in the store waits for the next look (``tests.gateway.running.knows_key``).
    Asked for before the gateway starts (it reads the interval as it starts)."""
    monkeypatch.setattr(auth, "RELOAD_INTERVAL_S", 0.1)
