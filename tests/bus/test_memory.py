from __future__ import annotations

import pytest

from llmos.bus import Delivery, open_bus
from llmos.bus.memory import MemoryBus
from llmos.errors import ConfigError
from tests.bus.contract import BusContract
from tests.waiting import eventually


class TestMemoryBus(BusContract):
    url = "memory://"


def test_open_bus_picks_the_backend_by_scheme() -> None:
    assert isinstance(open_bus("memory://"), MemoryBus)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        open_bus("memroy://")
    assert "memory://" in info.value.message
    assert "Did you mean memory://" in info.value.message


@pytest.mark.asyncio
async def test_an_auto_ack_consumer_gets_every_message_in_order_past_a_failing_one() -> None:
    # (auto_ack deliveries go through one pump task, not a task each)
    bus = MemoryBus()
    await bus.connect()
    await bus.declare_queue("replies")
    got: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.body == b"3":
            raise ValueError("a handler's own failure")
        got.append(delivery.body)

    await bus.consume("replies", handler, prefetch=1, auto_ack=True)
    for i in range(50):
        await bus.publish("replies", str(i).encode(), durable=False)
    await eventually(lambda: len(got) == 49)
    assert got == [str(i).encode() for i in range(50) if i != 3]
    await bus.close()
