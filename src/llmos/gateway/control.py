"""The gateway's view of the workers (their heartbeats) and the commands it sends them."""

from __future__ import annotations

import logging
import time
from typing import Literal

from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.messages import Command, Heartbeat, decode, encode
from llmos.controller.directory import WorkerDirectory
from llmos.errors import BusError, NotFound, Unavailable

log = logging.getLogger(__name__)


class WorkerNotFound(NotFound):
    code = "worker_not_found"


class WorkerControl:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.directory = WorkerDirectory()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(names.HEARTBEAT_TOPIC, self._on_heartbeat)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None

    def workers(self) -> list[Heartbeat]:
        return self.directory.live(time.time())

    async def command(self, worker_id: str, action: Literal["drain", "resume"]) -> Command:
        """Send ``action`` to the running process of ``worker_id``; void after two beats."""
        now = time.time()
        worker = self.directory.get(worker_id, now)
        if worker is None:
            known = ", ".join(h.worker_id for h in self.workers()) or "none"
            raise WorkerNotFound(f"no live worker {worker_id!r}; live workers: {known}")
        ttl_s = 2 * worker.interval_s
        command = Command(worker_id=worker_id, epoch=worker.epoch, action=action,
                          issued_at=now, expires_at=now + ttl_s)
        try:
            await self.bus.broadcast(names.COMMAND_TOPIC, encode(command), ttl_s=ttl_s)
        except BusError as exc:
            raise Unavailable(f"could not send {action} to {worker_id}: {exc.message}") from exc
        return command

    async def _on_heartbeat(self, message: TopicMessage) -> None:
        try:
            self.directory.observe(decode(Heartbeat, message.body))
        except BusError as exc:
            log.warning("ignored a heartbeat: %s", exc)
