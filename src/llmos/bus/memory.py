"""In-process bus: the embedded default, with the same delivery semantics as a broker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmos.bus.base import (
    Bus,
    Delivery,
    DeliveryHandler,
    Outcome,
    QueueOptions,
    Subscription,
    TopicHandler,
    TopicMessage,
    UnackedSubscription,
)
from llmos.errors import BusError, QueueFull

log = logging.getLogger(__name__)


@dataclass
class _Message:
    body: bytes
    headers: Mapping[str, str]
    expires_at: float | None
    delivery_count: int = 0


class _MemoryDelivery(Delivery):
    def __init__(self, queue: _Queue, consumer: _Consumer, message: _Message) -> None:
        self.body = message.body
        self.headers = message.headers
        self.delivery_count = message.delivery_count
        self._queue = queue
        self._consumer = consumer
        self._message = message

    async def _settle(self, outcome: Outcome) -> None:
        if outcome == "reject" and self._queue.dead is not None:
            log.warning("message dead-lettered from %s: rejected", self._queue.name)
            self._queue.dead.put(self._message)
        self.finish(requeue=outcome == "requeue")

    def finish(self, *, requeue: bool) -> None:
        """(Claimed already.) Done with it: back to the queue, or gone."""
        self._consumer.unacked.discard(self)
        if requeue:
            self._queue.requeue(self._message)
        self._queue.dispatch()


@dataclass(eq=False)
class _Consumer:
    queue: _Queue
    handler: DeliveryHandler
    prefetch: int
    auto_ack: bool
    unacked: set[_MemoryDelivery] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    active: bool = True
    cancelled: bool = False
    pending: deque[_MemoryDelivery] = field(default_factory=deque)
    """auto_ack: deliveries its pump has yet to hand over."""
    pumping: bool = False

    def has_room(self) -> bool:
        return self.active and (self.auto_ack or len(self.unacked) < self.prefetch)

    def start(self, delivery: _MemoryDelivery) -> None:
        """Hand a delivery to the handler. With auto_ack (nothing to settle, so nothing
        to wait for), one pump task calls the handler for every delivery in turn instead
        of a task each: a reply stream's chunks cost one task per wake-up, not per chunk."""
        if not self.auto_ack:
            self._task(self.handler(delivery))
            return
        self.pending.append(delivery)
        if not self.pumping:
            self.pumping = True
            self._task(self._pump())

    def _task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pump(self) -> None:
        try:
            while self.pending and not self.cancelled:
                try:
                    await self.handler(self.pending.popleft())
                except Exception:
                    log.exception("a handler of queue %s failed", self.queue.name)
        finally:
            self.pumping = False
            if self.cancelled:
                self.pending.clear()


class _Queue:
    def __init__(self, name: str, options: QueueOptions) -> None:
        self.name = name
        self.options = options
        self.messages: deque[_Message] = deque()
        self.consumers: list[_Consumer] = []
        self._rotation = itertools.count()
        self.dead: _Queue | None = None

    def put(self, message: _Message) -> None:
        limit = self.options.max_length
        if limit is not None and len(self.messages) >= limit:
            raise QueueFull(f"queue {self.name} is full ({limit} messages)")
        self.messages.append(message)
        self.dispatch()

    def requeue(self, message: _Message) -> None:
        limit = self.options.delivery_limit
        if limit is not None and message.delivery_count >= limit:
            log.warning("message dead-lettered from %s after %d deliveries",
                        self.name, message.delivery_count)
            if self.dead is not None:
                self.dead.put(message)
            return
        self.messages.appendleft(message)

    def dispatch(self) -> None:
        while self.messages:
            consumer = self._next_consumer()
            if consumer is None:
                return
            message = self.messages.popleft()
            if message.expires_at is not None and time.monotonic() > message.expires_at:
                continue
            message.delivery_count += 1
            delivery = _MemoryDelivery(self, consumer, message)
            if consumer.auto_ack:
                delivery.settled = True
            else:
                consumer.unacked.add(delivery)
            consumer.start(delivery)

    def _next_consumer(self) -> _Consumer | None:
        n = len(self.consumers)
        if n == 0:
            return None
        start = next(self._rotation)
        for i in range(n):
            consumer = self.consumers[(start + i) % n]
            if consumer.has_room():
                return consumer
        return None


class _QueueSubscription(Subscription):
    def __init__(self, consumer: _Consumer) -> None:
        self._consumer = consumer

    async def set_prefetch(self, prefetch: int) -> None:
        self._consumer.prefetch = prefetch
        self._consumer.queue.dispatch()

    async def pause(self) -> None:
        consumer = self._consumer
        consumer.active = False  # its unacked deliveries stay with it, still ackable
        if consumer in consumer.queue.consumers:
            consumer.queue.consumers.remove(consumer)

    async def cancel(self) -> None:
        consumer = self._consumer
        if consumer.cancelled:
            return
        consumer.cancelled = True
        consumer.active = False
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        # A consumer that goes away leaves its unacked messages to the others.
        for delivery in list(consumer.unacked):
            if delivery.claim():
                delivery.finish(requeue=True)
        queue.dispatch()


class _TopicSubscription(UnackedSubscription):
    def __init__(self, bus: MemoryBus, topic: str, handler: TopicHandler) -> None:
        self._bus = bus
        self._topic = topic
        self.handler = handler

    async def cancel(self) -> None:
        subs = self._bus._topics.get(self._topic, [])
        if self in subs:
            subs.remove(self)


class MemoryBus(Bus):
    """Queues and topics in this process's memory; gone when the process ends."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._queues: dict[str, _Queue] = {}
        self._topics: dict[str, list[_TopicSubscription]] = {}
        self._connected = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        for queue in self._queues.values():
            for consumer in list(queue.consumers):
                await _QueueSubscription(consumer).cancel()

    def _check(self) -> None:
        if not self._connected:
            raise self.not_connected()

    async def _declare_queue(self, name: str, options: QueueOptions) -> None:
        self._check()
        if name in self._queues:
            return
        queue = _Queue(name, options)
        if options.dead_letter_queue:
            queue.dead = self._queues[options.dead_letter_queue]
        self._queues[name] = queue

    async def delete_queue(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if queue is not None:
            for consumer in list(queue.consumers):
                consumer.active = False
            queue.consumers.clear()
            queue.messages.clear()

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise BusError(f"queue {name} does not exist (message unroutable)") from None

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
        durable: bool = True,
        confirm: bool | None = None,
    ) -> None:
        self._check()  # (in-process: every publish is confirmed by returning)
        expires = time.monotonic() + ttl_s if ttl_s is not None else None
        self._queue(queue).put(_Message(body, dict(headers or {}), expires))

    async def consume(
        self, queue: str, handler: DeliveryHandler, *, prefetch: int, auto_ack: bool = False
    ) -> Subscription:
        self._check()
        if prefetch < 1 and not auto_ack:
            raise BusError("prefetch must be at least 1")
        q = self._queue(queue)
        consumer = _Consumer(q, handler, prefetch, auto_ack)
        q.consumers.append(consumer)
        q.dispatch()
        return _QueueSubscription(consumer)

    async def broadcast(
        self, topic: str, body: bytes, *, headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        # Delivered at once to each subscriber, so nothing waits long enough to expire.
        self._check()
        message = TopicMessage(body, dict(headers or {}))
        loop = asyncio.get_running_loop()
        for sub in list(self._topics.get(topic, [])):
            task = loop.create_task(sub.handler(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def subscribe(self, topic: str, handler: TopicHandler) -> Subscription:
        self._check()
        sub = _TopicSubscription(self, topic, handler)
        self._topics.setdefault(topic, []).append(sub)
        return sub
