"""A worker's presence on the bus: its heartbeats, and the drain/resume orders for it.

Heartbeats go out every interval, at once when the worker's state changes, and when a
gateway that has just started asks every worker to beat (a roll call); an order counts
only for this worker's id and epoch (this start of the process), and only until it
expires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.beacon import Beacon, calls
from llmos.bus.messages import Command, Heartbeat, decode_or_ignore

log = logging.getLogger(__name__)

CHANGE_BEAT_S = 0.25
"""A worker whose busy slots changed beats again within this (not at most every
interval), but no more often."""

OnCommand = Callable[[Literal["drain", "resume"]], Awaitable[None]]


class Presence:
    def __init__(self, bus: Bus, worker_id: str, epoch: str, interval_s: float,
                 heartbeat: Callable[[], Heartbeat], on_command: OnCommand) -> None:
        self.bus = bus
        self.worker_id = worker_id
        self.epoch = epoch
        self.interval_s = interval_s
        self._on_command = on_command
        self._commands: Subscription | None = None
        self._beacon = Beacon(bus, names.HEARTBEAT_TOPIC, heartbeat, interval_s,
                              name=f"heartbeat-{worker_id}")

    async def subscribe(self) -> None:
        self._commands = await self.bus.subscribe(names.COMMAND_TOPIC, self._on_message)

    def start_beating(self) -> None:
        self._beacon.start()

    async def stop(self) -> None:
        await self._beacon.stop()
        if self._commands is not None:
            await self._commands.cancel()

    async def send(self) -> None:
        """A heartbeat now (the state changed), besides those every interval."""
        await self._beacon.send()

    def changed(self) -> None:
        """Its load changed: a heartbeat within ``CHANGE_BEAT_S`` (gateways routing by
        prefix count its free slots), however often it changes."""
        self._beacon.send_within(CHANGE_BEAT_S)

    async def _on_message(self, message: TopicMessage) -> None:
        command = decode_or_ignore(Command, message.body)
        if command is None:
            return
        if command.action == "beat":
            if calls(command, self.worker_id):
                self._beacon.answer()
            return
        if command.worker_id != self.worker_id:
            return
        if command.epoch != self.epoch:
            log.warning("ignored %s for an earlier start of this worker", command.action)
            return
        if time.time() > command.expires_at:
            log.warning("ignored a stale %s command", command.action)
            return
        await self._on_command(command.action)
