"""A beacon: a message broadcast every interval, and at once when asked (a state
changed, or a roll call). The one loop behind a worker's heartbeats and a node agent's
status.

A roll call (``roll_call``) asks every beacon on the bus to send now: a gateway or a
controller that has just started listening knows who is there within moments, not by
their next beats. It is a ``beat`` command for everyone (``names.EVERYONE``) on the
command topic, which workers and agents read already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pydantic import BaseModel

from llmos.aio import stop_task
from llmos.bus import names
from llmos.bus.base import Bus
from llmos.bus.messages import Command, encode
from llmos.errors import BusError

log = logging.getLogger(__name__)

ROLL_CALL_ANSWER_S = 0.05
"""A roll call is answered within this (calls that come meanwhile get one answer)."""


class Beacon:
    def __init__(self, bus: Bus, topic: str, message: Callable[[], BaseModel],
                 interval_s: float, *, name: str) -> None:
        self.bus = bus
        self.topic = topic
        self.message = message
        self.interval_s = interval_s
        self.name = name
        self._loop: asyncio.Task[None] | None = None
        self._soon: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        for task in (self._loop, self._soon):
            if task is not None:
                await stop_task(task)
        self._loop = self._soon = None

    async def send(self) -> None:
        """Broadcast now; a message lives two intervals (the next replaces it). A failure
        is logged, never raised: the next one may get through."""
        try:
            body = self.message().model_dump_json().encode()
            await self.bus.broadcast(self.topic, body, ttl_s=2 * self.interval_s)
        except BusError as exc:
            log.warning("%s not sent: %s", self.name, exc.message)

    def send_soon(self) -> None:
        """Broadcast as soon as the loop gets to it, without waiting for the interval
        (calls while one is pending are one)."""
        if self._soon is None or self._soon.done():
            self._soon = asyncio.get_running_loop().create_task(self.send())

    def send_within(self, delay_s: float) -> None:
        """Broadcast within ``delay_s`` (changes that come meanwhile ride along): for a
        state that changes often, such as a worker's busy slots. Nothing before
        ``start`` or after ``stop``."""
        if self._loop is not None and (self._soon is None or self._soon.done()):
            self._soon = asyncio.get_running_loop().create_task(self._send_after(delay_s))

    def answer(self) -> None:
        """A roll call came: send within ``ROLL_CALL_ANSWER_S``."""
        self.send_within(ROLL_CALL_ANSWER_S)

    async def _send_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.send()

    async def _run(self) -> None:
        while True:
            await self.send()
            await asyncio.sleep(self.interval_s)


async def roll_call(bus: Bus) -> bool:
    """Ask every worker and node agent on ``bus`` to beat now; False (logged) when it
    could not be sent (then they are known by their next beats)."""
    now = time.time()
    # (Void after two beats, as every command: a late answer costs one beat, and a roll
    # call as short-lived as its wait would be void on a host whose clock is behind.)
    ttl_s = 2 * names.HEARTBEAT_INTERVAL_S
    call = Command(worker_id=names.EVERYONE, epoch="", action="beat", issued_at=now,
                   expires_at=now + ttl_s)
    try:
        await bus.broadcast(names.COMMAND_TOPIC, encode(call), ttl_s=ttl_s)
    except BusError as exc:
        log.warning("could not ask the workers and agents to beat (%s): they are known by "
                    "their next beats", exc.message)
        return False
    return True


def calls(command: Command, name: str) -> bool:
    """Whether ``command`` is a roll call, still live, that ``name`` answers."""
    return (command.action == "beat" and command.worker_id in (names.EVERYONE, name)
            and time.time() <= command.expires_at)
