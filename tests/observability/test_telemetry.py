"""Telemetry is bounded and lossy: it never waits for the bus, and counts what it drops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from llmos.bus import TopicMessage
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import LogEvent, decode
from llmos.observability.metrics import REGISTRY
from llmos.observability.telemetry import BusLogHandler, TelemetryPublisher
from tests.waiting import eventually


class StalledBus(MemoryBus):
    """A bus whose broadcasts hang until released, like a broker under pressure."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def broadcast(self, topic: str, body: bytes, *,
                        headers: Mapping[str, str] | None = None,
                        ttl_s: float | None = None) -> None:
        await self.release.wait()
        await super().broadcast(topic, body, headers=headers, ttl_s=ttl_s)


def dropped(topic: str) -> float:
    return REGISTRY.get_sample_value("llmos_telemetry_dropped_total", {"topic": topic}) or 0.0


@pytest.mark.asyncio
async def test_a_stalled_bus_makes_telemetry_drop_not_wait() -> None:
    bus = StalledBus()
    await bus.connect()
    got: list[bytes] = []

    async def on_event(message: TopicMessage) -> None:
        got.append(message.body)

    await bus.subscribe("t.stalled", on_event)
    publisher = TelemetryPublisher(bus, "t.stalled", capacity=3)
    publisher.start()
    before = dropped("t.stalled")
    accepted = []
    for i in range(10):
        accepted.append(publisher.offer(str(i).encode()))  # returns at once, never awaits
        await asyncio.sleep(0)
    # One event is with the stalled broadcast, three wait in the buffer, six are dropped.
    assert accepted == [True] * 4 + [False] * 6
    assert dropped("t.stalled") == before + 6
    bus.release.set()
    await eventually(lambda: len(got) == 4, timeout_s=1.0, what="the buffered events sent")
    assert got == [b"0", b"1", b"2", b"3"]
    await publisher.stop()
    await bus.close()


@pytest.mark.asyncio
async def test_warnings_and_errors_go_to_the_bus_info_does_not() -> None:
    bus = MemoryBus()
    await bus.connect()
    events: list[LogEvent] = []

    async def on_event(message: TopicMessage) -> None:
        events.append(decode(LogEvent, message.body))

    await bus.subscribe("t.logs", on_event)
    publisher = TelemetryPublisher(bus, "t.logs")
    publisher.start()
    handler = BusLogHandler(publisher, "w1", asyncio.get_running_loop())
    logger = logging.getLogger("llmos.test.telemetry")
    logger.addHandler(handler)
    try:
        logger.info("routine")
        logger.warning("slot %d is slow", 3)
        await asyncio.to_thread(logger.error, "from an engine thread")
        await eventually(lambda: len(events) == 2, what="the events on the bus")
    finally:
        logger.removeHandler(handler)
    assert [(e.level, e.message) for e in events] == [
        ("warning", "slot 3 is slow"), ("error", "from an engine thread")]
    assert {e.worker_id for e in events} == {"w1"}
    await publisher.stop()
    await bus.close()
