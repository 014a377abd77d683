"""A worker's presence: it answers a roll call with a heartbeat at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmos.bus import TopicMessage, names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Command, Heartbeat, decode, encode
from llmos.worker.presence import Presence
from tests.waiting import eventually


def _beat() -> Heartbeat:
    return Heartbeat(worker_id="w1", epoch="e1", deployment="m", host="h", slots=1, busy=0,
                     sent_at=time.time(), interval_s=60)


async def _call(bus: MemoryBus, worker_id: str, *, age_s: float = 0.0) -> None:
    now = time.time() - age_s
    await bus.broadcast(names.COMMAND_TOPIC, encode(Command(
        worker_id=worker_id, epoch="", action="beat", issued_at=now, expires_at=now + 1.0)))


@pytest.mark.asyncio
async def test_a_roll_call_is_answered_at_once_and_a_stale_or_anothers_is_not(
        bus: MemoryBus) -> None:
    beats: list[Heartbeat] = []

    async def on_beat(message: TopicMessage) -> None:
        beats.append(decode(Heartbeat, message.body))

    async def ignored() -> None:
        raise AssertionError("a roll call is no drain or resume")

    await bus.subscribe(names.HEARTBEAT_TOPIC, on_beat)
    presence = Presence(bus, "w1", "e1", 60, _beat, lambda action: ignored())
    await presence.subscribe()
    presence.start_beating()
    try:
        await eventually(lambda: len(beats) == 1, what="the first heartbeat")
        for stale_or_anothers in (_call(bus, "w1", age_s=5), _call(bus, "w2")):
            await stale_or_anothers
        await asyncio.sleep(0.2)
        assert len(beats) == 1  # (the next is a minute away)
        await _call(bus, names.EVERYONE)
        await eventually(lambda: len(beats) == 2, timeout_s=0.5, what="the answer")
        await _call(bus, "w1")  # (one worker may be called by its id too)
        await eventually(lambda: len(beats) == 3, timeout_s=0.5, what="the answer")
    finally:
        await presence.stop()
