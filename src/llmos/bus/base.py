"""The bus protocol every backend implements.

Two kinds of channel:

* **queues** (``declare_queue`` / ``publish`` / ``consume``): each message goes to
  one consumer, which acks it when done; a consumer gets at most ``prefetch``
  unacked messages; a message whose consumer goes away unacked is redelivered
  with a higher ``delivery_count``; a message past its TTL is never delivered.
* **topics** (``broadcast`` / ``subscribe``): every subscriber gets every
  message, at most once, without acks (cancels, heartbeats).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from llmos.errors import BusError


@dataclass(frozen=True)
class QueueOptions:
    """How a queue behaves; backends map these onto their own features."""

    durable: bool = True
    exclusive: bool = False
    max_length: int | None = None
    delivery_limit: int | None = None
    dead_letter_queue: str | None = None


_H = TypeVar("_H")

Outcome = Literal["ack", "requeue", "reject"]
"""How a delivery was settled: done; back to its queue; given up (dead-lettered where
the queue has a dead-letter queue, else dropped)."""


class Delivery(abc.ABC):
    """One delivered message, settled once: the first ``ack`` or ``nack`` counts, later
    ones do nothing (an auto-acked delivery is settled when it arrives). A backend
    supplies one primitive, ``_settle``, and never sees a second settlement."""

    body: bytes
    headers: Mapping[str, str]
    delivery_count: int  # 1 on the first delivery
    settled: bool = False

    async def ack(self) -> None:
        if self.claim():
            await self._settle("ack")

    async def nack(self, *, requeue: bool = True) -> None:
        if self.claim():
            await self._settle("requeue" if requeue else "reject")

    def claim(self) -> bool:
        """Take the right to settle this delivery: False if it is settled already. (A
        consumer that goes away claims what it holds, to put it back itself.)"""
        if self.settled:
            return False
        self.settled = True
        return True

    @abc.abstractmethod
    async def _settle(self, outcome: Outcome) -> None:
        """Tell the broker, once: ``ack``, ``requeue`` or ``reject``."""


async def requeue_all(deliveries: Iterable[Delivery]) -> None:
    """A consumer that goes away puts back what it holds and has not settled; one that
    cannot be put back (the connection is gone) comes back by the broker's redelivery."""
    for delivery in list(deliveries):
        with contextlib.suppress(Exception):
            await delivery.nack(requeue=True)


@dataclass
class TopicMessage:
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


DeliveryHandler = Callable[[Delivery], Coroutine[Any, Any, None]]
TopicHandler = Callable[[TopicMessage], Coroutine[Any, Any, None]]


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def set_prefetch(self, prefetch: int) -> None: ...

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop receiving new deliveries; those already received can still be settled."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving; unacked deliveries of a queue go back to it."""


class UnackedSubscription(Subscription):
    """A subscription without acks (a topic, a reply stream read at most once): there is
    no prefetch to set, and pausing it is cancelling it. A backend supplies ``cancel``."""

    async def set_prefetch(self, prefetch: int) -> None:
        return None

    async def pause(self) -> None:
        await self.cancel()


ReconnectHandler = Callable[[], Coroutine[Any, Any, None]]


class Bus(abc.ABC):
    """A connection to one message bus."""

    url: str
    deliveries_survive_reconnect = False
    """True where deliveries held when the connection drops stay valid after it is
    restored (NATS: acks are plain messages to the server's ack subjects)."""

    def on_reconnect(self, handler: ReconnectHandler) -> None:
        """Call ``handler`` after the connection was lost and restored.

        Consumers and subscriptions resume by themselves; what was in flight on
        the lost connection (unacked deliveries, transient replies) is gone, and
        the handler is where its owner learns that.
        """
        self._reconnect_handlers().append(handler)

    def _reconnect_handlers(self) -> list[ReconnectHandler]:
        handlers: list[ReconnectHandler] | None = getattr(self, "_on_reconnect", None)
        if handlers is None:
            handlers = []
            self._on_reconnect = handlers
        return handlers

    async def _notify_reconnect(self) -> None:
        for handler in list(self._reconnect_handlers()):
            await handler()

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def declare_queue(self, name: str, options: QueueOptions | None = None) -> None:
        """Make a queue (one that exists already: no error), its dead-letter queue first."""
        opts = options or QueueOptions()
        if opts.dead_letter_queue:
            await self._declare_queue(opts.dead_letter_queue,
                                      QueueOptions(durable=opts.durable))
        await self._declare_queue(name, opts)

    @abc.abstractmethod
    async def _declare_queue(self, name: str, options: QueueOptions) -> None:
        """Make one queue as the backend does (its dead-letter queue, if it names one,
        exists already)."""

    @abc.abstractmethod
    async def delete_queue(self, name: str) -> None:
        """Remove a queue and its messages; a queue that does not exist is no error."""

    @abc.abstractmethod
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
        """Put a message on a declared queue; raises BusError if it cannot be routed.

        ``durable`` messages (requests) are persisted and confirmed by the broker;
        others (reply chunks) are transient and unconfirmed: cheaper, and lost
        with a broker restart, which their senders tolerate. ``confirm=True`` makes
        a transient message wait for the broker's confirm (and raise when it cannot
        be routed): a worker sends a request's final chunk so, before it acks.
        """

    @abc.abstractmethod
    async def consume(
        self, queue: str, handler: DeliveryHandler, *, prefetch: int, auto_ack: bool = False
    ) -> Subscription:
        """Call ``handler`` for each message, concurrently up to ``prefetch`` unacked ones."""

    @abc.abstractmethod
    async def broadcast(
        self, topic: str, body: bytes, *, headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Send to every current subscriber; transient, dropped after ``ttl_s`` unread.

        A subscriber that falls behind loses the oldest messages, never blocks the sender.
        """

    @abc.abstractmethod
    async def subscribe(self, topic: str, handler: TopicHandler) -> Subscription: ...

    def not_connected(self) -> BusError:
        """The error of an operation on a bus that is not (or no longer) connected."""
        return BusError(f"bus {safe_url(self.url)} is not connected")

    def _live(self, handle: _H | None) -> _H:
        """``handle`` (a connection, a channel, a client): a backend sets its handles at
        ``connect`` and clears them at ``close``, so an operation outside those raises
        ``not_connected`` and never an ``AttributeError`` on None."""
        if handle is None:
            raise self.not_connected()
        return handle

    async def __aenter__(self) -> Bus:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def safe_url(url: str) -> str:
    """The URL without its password (``amqp://user:***@host``), for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
