"""A worker's presence on the bus: its heartbeats, and the drain/resume orders for it.

Heartbeats go out every interval and at once when the worker's state changes; an
order counts only for this worker's id and epoch (this start of the process), and
only until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.messages import Command, Heartbeat, decode_or_ignore, encode
from llmos.errors import BusError

log = logging.getLogger(__name__)

OnCommand = Callable[[Literal["drain", "resume"]], Awaitable[None]]


class Presence:
    def __init__(self, bus: Bus, worker_id: str, epoch: str, interval_s: float,
                 heartbeat: Callable[[], Heartbeat], on_command: OnCommand) -> None:
        self.bus = bus
        self.worker_id = worker_id
        self.epoch = epoch
        self.interval_s = interval_s
        self._heartbeat = heartbeat
        self._on_command = on_command
        self._commands: Subscription | None = None
        self._beating: asyncio.Task[None] | None = None

    async def subscribe(self) -> None:
        self._commands = await self.bus.subscribe(names.COMMAND_TOPIC, self._on_message)

    def start_beating(self) -> None:
        self._beating = asyncio.create_task(self._beat(), name=f"heartbeat-{self.worker_id}")

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        if self._commands is not None:
            await self._commands.cancel()

    async def send(self) -> None:
        try:
            await self.bus.broadcast(names.HEARTBEAT_TOPIC, encode(self._heartbeat()),
                                     ttl_s=2 * self.interval_s)
        except BusError as exc:  # the next one may get through; never fatal
            log.warning("heartbeat not sent: %s", exc)

    async def _beat(self) -> None:
        while True:
            await self.send()
            await asyncio.sleep(self.interval_s)

    async def _on_message(self, message: TopicMessage) -> None:
        command = decode_or_ignore(Command, message.body)
        if command is None or command.worker_id != self.worker_id:
            return
        if command.epoch != self.epoch:
            log.warning("ignored %s for an earlier start of this worker", command.action)
            return
        if time.time() > command.expires_at:
            log.warning("ignored a stale %s command", command.action)
            return
        await self._on_command(command.action)
