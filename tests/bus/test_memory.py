from __future__ import annotations

import pytest

from llmos.bus import open_bus
from llmos.bus.memory import MemoryBus
from llmos.errors import ConfigError
from tests.bus.contract import BusContract


class TestMemoryBus(BusContract):
    url = "memory://"


def test_open_bus_picks_the_backend_by_scheme() -> None:
    assert isinstance(open_bus("memory://"), MemoryBus)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        open_bus("memroy://")
    assert "memory://" in info.value.message
    assert "Did you mean memory://" in info.value.message
