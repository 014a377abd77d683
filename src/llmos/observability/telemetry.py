"""Telemetry over the bus: bounded, lossy, never in the way of a request.

``TelemetryPublisher.offer`` never waits: it puts an event in a bounded buffer,
and one background task publishes the buffer on a topic (transient, with a TTL).
When the buffer is full (the bus is slow or down) the event is dropped and
counted in ``llmos_telemetry_dropped_total``. ``BusLogHandler`` ships a worker's
warnings and errors the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time

from llmos.aio import stop_task
from llmos.bus import Bus, names
from llmos.bus.messages import LogEvent, encode
from llmos.errors import BusError
from llmos.observability import metrics
from llmos.observability.context import request_id_var

log = logging.getLogger(__name__)


class TelemetryPublisher:
    def __init__(self, bus: Bus, topic: str, *, capacity: int = 1000,
                 ttl_s: float = names.TELEMETRY_TTL_S) -> None:
        self.bus = bus
        self.topic = topic
        self.ttl_s = ttl_s
        self._buffer: asyncio.Queue[bytes] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None
        self._sent = metrics.TELEMETRY_SENT.labels(topic)
        self._dropped = metrics.TELEMETRY_DROPPED.labels(topic)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name=f"telemetry {self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    def offer(self, body: bytes) -> bool:
        """Queue one event for publishing; False (and counted) when it had to be dropped."""
        try:
            self._buffer.put_nowait(body)
        except asyncio.QueueFull:
            self._dropped.inc()
            return False
        return True

    async def _drain(self) -> None:
        while True:
            body = await self._buffer.get()
            try:
                await self.bus.broadcast(self.topic, body, ttl_s=self.ttl_s)
            except BusError as exc:
                self._dropped.inc()
                log.debug("telemetry on %s dropped: %s", self.topic, exc)
            else:
                self._sent.inc()


class BusLogHandler(logging.Handler):
    """Sends WARNING and above to the bus as LogEvents (from the event loop's thread)."""

    def __init__(self, publisher: TelemetryPublisher, worker_id: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.publisher = publisher
        self.worker_id = worker_id
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("llmos.observability.telemetry", "aio_pika", "aiormq")):
            return  # never report on the reporting path itself
        try:
            event = LogEvent(worker_id=self.worker_id, level=record.levelname.lower(),
                             logger=record.name, message=record.getMessage(),
                             request_id=request_id_var.get(), at=time.time())
            body = encode(event)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self.loop:
                self.publisher.offer(body)
            else:
                self.loop.call_soon_threadsafe(self.publisher.offer, body)
        except Exception:
            self.handleError(record)
