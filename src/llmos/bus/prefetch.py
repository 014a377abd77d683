"""The mechanism of a queue consumer that pulls: take while it holds fewer than its prefetch.

Redis Streams, NATS JetStream and Kafka give a consumer no broker-side prefetch (as
RabbitMQ's ``basic.qos`` does), so each of their consumers pulls in a loop of its own,
asking for as many messages as it has room for. What that loop shares is here, written
once: the prefetch and the room it leaves, the wake-up when a delivery is settled (or
anything else changes), pause, the loop task, the handler tasks, and a cancel that hands
back what is held. Each backend supplies its primitives: its pull loop (``_run``), how
many deliveries it holds, and how they go back to the queue.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib

from llmos.aio import stop_task
from llmos.bus.base import Delivery, DeliveryHandler, Subscription
from llmos.bus.envelope import Running


class PrefetchConsumer(Subscription):
    def __init__(self, queue: str, handler: DeliveryHandler, prefetch: int) -> None:
        self.queue = queue
        self.handler = handler
        self.prefetch = max(1, prefetch)
        self.paused = False
        """Takes nothing new (``pause``, ``cancel``); what it holds can still be settled."""
        self.cancelled = False
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._running = Running()

    @abc.abstractmethod
    def holding(self) -> int:
        """Deliveries handed to the handler and not settled yet."""

    @abc.abstractmethod
    async def _run(self) -> None:
        """The pull loop: takes up to ``room`` at a time, ``wait``\\s when there is none."""

    @abc.abstractmethod
    async def _give_back(self) -> None:
        """(On cancel, its loop stopped) what it holds goes back to the queue."""

    async def _close_intake(self) -> None:
        """(On cancel, before its loop stops) nothing more may arrive."""

    async def _forget(self) -> None:
        """(On cancel, last) the bus and the broker no longer know this consumer."""

    @property
    def room(self) -> int:
        """How many it may take now."""
        return 0 if self.paused else self.prefetch - self.holding()

    def wake(self) -> None:
        """Something changed (a delivery settled, the prefetch, a pull ended): look again."""
        self._wake.set()

    async def wait(self, timeout_s: float) -> None:
        """Until ``wake`` or ``timeout_s``."""
        self._wake.clear()
        # (not wait_for: in 3.11 it can swallow a cancel that races its timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    def start_loop(self) -> None:
        self._loop = asyncio.create_task(self._run(), name=f"{type(self).__name__} {self.queue}")

    async def stop_loop(self) -> None:
        if self._loop is not None:
            await stop_task(self._loop)
            self._loop = None

    def hand(self, delivery: Delivery) -> None:
        """Start the handler on a delivery (held until settled)."""
        self._running.spawn(self.handler(delivery))

    async def set_prefetch(self, prefetch: int) -> None:
        self.prefetch = max(1, prefetch)
        self.wake()

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.paused = True
        await self._close_intake()
        await self.stop_loop()
        await self._give_back()
        await self._forget()
