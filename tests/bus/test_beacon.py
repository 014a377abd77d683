"""The beacon behind heartbeats and node statuses, on the in-process bus."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from llmos.bus import TopicMessage, open_bus
from llmos.errors import BusError
from tests.waiting import eventually


class Ping(BaseModel):
    n: int


@pytest.mark.asyncio
async def test_it_sends_every_interval_and_at_once_when_asked() -> None:
    from llmos.bus.beacon import Beacon

    bus = open_bus("memory://")
    await bus.connect()
    got: list[bytes] = []

    async def handle(m: TopicMessage) -> None:
        got.append(m.body)

    sub = await bus.subscribe("test.beacon", handle)
    count = iter(range(1000))
    often = Beacon(bus, "test.beacon", lambda: Ping(n=next(count)), 0.05, name="often")
    rarely = Beacon(bus, "test.beacon", lambda: Ping(n=-1), 60.0, name="rarely")
    try:
        often.start()
        await eventually(lambda: len(got) >= 3, 5.0)
        await often.stop()
        numbers = [Ping.model_validate_json(b).n for b in got]
        assert numbers == list(range(len(numbers)))
        got.clear()
        rarely.start()  # one at start, the next a minute later...
        await eventually(lambda: len(got) == 1, 5.0)
        rarely.send_soon()  # ... unless asked: then now,
        rarely.send_soon()  # and once for calls made while one is pending
        await eventually(lambda: len(got) == 2, 5.0)
        await asyncio.sleep(0.2)
        assert len(got) == 2
    finally:
        await often.stop()
        await rarely.stop()
        await sub.cancel()
        await bus.close()


@pytest.mark.asyncio
async def test_a_failed_send_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from llmos.bus.beacon import Beacon

    bus = open_bus("memory://")

    async def refuse(*args: object, **kwargs: object) -> None:
        raise BusError("the bus is down")

    bus.broadcast = refuse  # type: ignore[method-assign]
    beacon = Beacon(bus, "test.beacon", lambda: Ping(n=1), 10.0, name="ping")
    await beacon.send()
    assert "ping not sent: the bus is down" in caplog.text


@pytest.mark.asyncio
async def test_changes_in_a_burst_make_one_early_beat_and_none_after_stop() -> None:
    from llmos.bus.beacon import Beacon

    bus = open_bus("memory://")
    await bus.connect()
    got: list[bytes] = []

    async def on(message: TopicMessage) -> None:
        got.append(message.body)

    await bus.subscribe("t", on)
    beacon = Beacon(bus, "t", lambda: Ping(n=0), 60, name="b")
    beacon.send_within(0.01)  # not started: nothing
    beacon.start()
    await eventually(lambda: len(got) == 1)  # the first beat, at start
    for _ in range(10):
        beacon.send_within(0.05)
    await eventually(lambda: len(got) == 2)
    await asyncio.sleep(0.1)
    assert len(got) == 2  # ten changes, one beat
    await beacon.stop()
    beacon.send_within(0.01)
    await asyncio.sleep(0.05)
    assert len(got) == 2
    await bus.close()
