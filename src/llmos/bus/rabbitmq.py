"""RabbitMQ backend (``amqp://user:pass@host:port/vhost``) through aio-pika.

* Durable queues are quorum queues: replicated, with ``x-delivery-limit`` and
  dead-lettering; exclusive queues (a gateway's replies) are classic and vanish
  with their connection.
* Publishing to a queue uses one channel with publisher confirms and
  ``mandatory``: an unroutable or refused message raises ``BusError`` instead of
  vanishing. aio-pika keeps many publishes in flight on that channel, so
  concurrent publishers share a window of confirms rather than waiting in turn.
  ``durable=False`` messages (reply chunks) go on a channel without confirms.
  RabbitMQ orders messages per channel only, so a confirmed reply chunk (the final
  one) may overtake the unconfirmed ones before it; reply chunks carry a sequence
  number, and the gateway reads them by it.
* Each consumer has its own robust channel with ``prefetch`` as its QoS, so
  cancelling a subscription (closing its channel) hands its unacked messages
  back. It subscribes through aiormq directly (aio-pika's message wrapper and its
  extra task per message cost more than the delivery itself) and again whenever
  aio-pika reopens the channel after a reconnect.
* Topics are fanout exchanges; each subscriber binds an exclusive queue.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

from llmos.bus import names
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
    safe_url,
)
from llmos.errors import BusError, QueueFull

log = logging.getLogger(__name__)


class _AmqpDelivery(Delivery):
    """A delivery as aiormq hands it over (aio-pika's IncomingMessage costs too much here)."""

    def __init__(self, message: Any, *, auto_ack: bool) -> None:
        self._channel = message.channel
        self._tag = message.delivery.delivery_tag
        self.settled = auto_ack
        self.body = message.body
        raw = message.header.properties.headers or {}
        self.headers = {k: v.decode() if isinstance(v, bytes) else str(v)
                        for k, v in raw.items()}
        # Quorum queues count earlier failed deliveries in x-delivery-count.
        if "x-delivery-count" in raw:
            self.delivery_count = int(raw["x-delivery-count"]) + 1
        else:
            self.delivery_count = 2 if message.delivery.redelivered else 1

    async def _settle(self, outcome: Outcome) -> None:
        try:
            if outcome == "ack":
                await self._channel.basic_ack(self._tag)
            else:
                await self._channel.basic_nack(self._tag, requeue=outcome == "requeue")
        except Exception as exc:
            # The channel it came on is gone: the broker has already put it back.
            log.warning("could not settle a delivery (connection lost?): %s", exc)


class _QueueConsumer(Subscription):
    """A consumer on its own robust channel, subscribed straight through aiormq.

    aio-pika's robust channel reopens after a lost connection (QoS and the queue
    restored); ``reopen_callbacks`` then subscribe again, unless paused or cancelled.
    """

    def __init__(self, channel: Any, queue: str, handler: DeliveryHandler, *,
                 auto_ack: bool) -> None:
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._auto_ack = auto_ack
        self._tag: str | None = None
        self._paused = False
        self._cancelled = False
        self._subscribing = asyncio.Lock()
        channel.reopen_callbacks.add(self._resubscribe)

    async def subscribe(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        auto_ack = self._auto_ack

        async def on_message(message: Any) -> None:
            await self._handler(_AmqpDelivery(message, auto_ack=auto_ack))

        ok = await underlay.basic_consume(self._queue, on_message, no_ack=auto_ack)
        self._tag = ok.consumer_tag

    async def _resubscribe(self, *_: Any) -> None:
        await self.ensure_subscribed()

    async def ensure_subscribed(self) -> None:
        """Subscribe again unless the channel in use already has our consumer.

        Called when the robust channel reopens and, as a backstop, after the
        connection is back (a channel whose restore raced the reconnect may reopen
        without the callback); the lock and the check make it idempotent.
        """
        async with self._subscribing:
            for _ in range(60):
                if self._paused or self._cancelled:
                    return
                try:
                    underlay = await self._channel.get_underlay_channel()
                    if self._tag is not None and self._tag in underlay.consumers:
                        return
                    await self.subscribe()
                    return
                except Exception as exc:  # the channel is still coming back
                    log.debug("resubscribing to %s: %s", self._queue, exc)
                    await asyncio.sleep(0.5)
            log.error("could not subscribe to %s again after a reconnect", self._queue)

    async def _unsubscribe(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None:
            underlay = await self._channel.get_underlay_channel()
            await underlay.basic_cancel(tag)

    async def set_prefetch(self, prefetch: int) -> None:
        # A new per-consumer QoS applies to consumers started after it (and quorum
        # queues refuse channel-wide QoS), so the consumer restarts on the same
        # channel; its unacked deliveries stay valid.
        await self._channel.set_qos(prefetch_count=prefetch)
        old = self._tag
        await self.subscribe()
        if old is not None:
            underlay = await self._channel.get_underlay_channel()
            await underlay.basic_cancel(old)

    async def pause(self) -> None:
        # basic.cancel on an open channel: no new deliveries, the unacked ones stay ackable.
        if not self._paused:
            self._paused = True
            await self._unsubscribe()

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._resubscribe)
        try:
            await self._unsubscribe()
        except Exception as exc:  # the channel may already be gone with its connection
            log.debug("cancel of %s failed: %s", self._queue, exc)
        # Closing the channel returns its unacked messages to the queue.
        if not self._channel.is_closed:
            await self._channel.close()


class _TopicSubscription(UnackedSubscription):
    """A topic's subscriber: an exclusive queue of its own bound to the topic's exchange,
    on a channel of its own, read without acks. Cancelling it closes the channel (the
    queue, auto-delete, goes with it)."""

    def __init__(self, channel: Any, queue: Any, tag: str) -> None:
        self._channel = channel
        self._queue = queue
        self._tag = tag
        self._cancelled = False

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        try:
            await self._queue.cancel(self._tag)
        except Exception as exc:  # the channel may already be gone with its connection
            log.debug("cancel of %s failed: %s", self._tag, exc)
        if not self._channel.is_closed:
            await self._channel.close()


class RabbitMQBus(Bus):
    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None
        self._confirmed: Any = None
        self._fast: Any = None
        self._exchanges: dict[str, Any] = {}
        self._consumers: weakref.WeakSet[_QueueConsumer] = weakref.WeakSet()
        self._resubscribing: set[asyncio.Future[None]] = set()

    async def connect(self) -> None:
        import aio_pika

        try:
            self._connection = await aio_pika.connect_robust(self.url)
        except Exception as exc:  # aiormq and socket errors
            raise BusError(f"cannot connect to RabbitMQ at {safe_url(self.url)}: {exc}") from exc
        self._confirmed = await self._connection.channel(publisher_confirms=True,
                                                         on_return_raises=True)
        self._fast = await self._connection.channel(publisher_confirms=False)

        async def reconnected(*_: Any) -> None:
            log.warning("reconnected to RabbitMQ at %s", safe_url(self.url))
            for consumer in list(self._consumers):
                task = asyncio.ensure_future(consumer.ensure_subscribed())
                self._resubscribing.add(task)
                task.add_done_callback(self._resubscribing.discard)
            await self._notify_reconnect()

        self._connection.reconnect_callbacks.add(reconnected)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._confirmed = self._fast = None

    def _channel(self) -> Any:
        return self._live(self._confirmed)

    async def _declare_queue(self, name: str, opts: QueueOptions) -> None:
        channel = self._channel()
        arguments: dict[str, Any] = {}
        if opts.durable and not opts.exclusive:
            arguments["x-queue-type"] = "quorum"
            if opts.delivery_limit is not None:
                # x-delivery-limit counts returns; ours counts deliveries in all.
                arguments["x-delivery-limit"] = max(0, opts.delivery_limit - 1)
        if opts.dead_letter_queue:
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = opts.dead_letter_queue
            if arguments.get("x-queue-type") == "quorum":
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        if opts.max_length is not None:
            arguments["x-max-length"] = opts.max_length
            arguments["x-overflow"] = "reject-publish"
        try:
            await channel.declare_queue(
                name, durable=opts.durable and not opts.exclusive, exclusive=opts.exclusive,
                auto_delete=opts.exclusive, arguments=arguments)
        except Exception as exc:
            # A different redeclaration closes the channel: open a fresh one.
            self._confirmed = await self._connection.channel(publisher_confirms=True,
                                                             on_return_raises=True)
            hint = (f"; it exists with other arguments: delete it "
                    f"(rabbitmqctl delete_queue {name}) to apply the new ones"
                    if "PRECONDITION_FAILED" in str(exc) else "")
            raise BusError(f"cannot declare queue {name}: {exc}{hint}") from exc

    async def delete_queue(self, name: str) -> None:
        try:
            await self._channel().queue_delete(name)
        except Exception as exc:
            log.debug("delete of queue %s: %s", name, exc)
            # a failed delete closes the channel; open a fresh one
            self._confirmed = await self._connection.channel(publisher_confirms=True,
                                                             on_return_raises=True)

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
        import aio_pika
        from pamqp.commands import Basic

        # Straight onto aiormq's channel: aio-pika's Message and Exchange wrappers cost
        # more than the publish itself on the hot path. The exceptions are the same.
        properties = Basic.Properties(
            headers=dict(headers) if headers else None,
            expiration=str(max(1, int(ttl_s * 1000))) if ttl_s is not None else None,
            delivery_mode=2 if durable else 1)
        confirmed = durable if confirm is None else confirm
        channel = await (self._channel() if confirmed
                         else self._live(self._fast)).get_underlay_channel()
        try:
            await channel.basic_publish(body, routing_key=queue, properties=properties,
                                        mandatory=confirmed)
        except aio_pika.exceptions.PublishError as exc:  # (a DeliveryError: test it first)
            # A Basic.Return of a mandatory message: nothing is bound to that name.
            raise BusError(f"queue {queue} does not exist (message unroutable)") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            # A Basic.Nack: the queue is at its length limit (overflow reject-publish).
            raise QueueFull(f"queue {queue} is full; it refused the message") from exc

    async def consume(
        self, queue: str, handler: DeliveryHandler, *, prefetch: int, auto_ack: bool = False
    ) -> Subscription:
        channel = await self._live(self._connection).channel()
        await channel.set_qos(prefetch_count=0 if auto_ack else prefetch)
        # A passive declare: it fails for a missing queue, and the robust channel
        # checks the queue again when it reopens after a reconnect.
        consumer = _QueueConsumer(channel, queue, handler, auto_ack=auto_ack)
        try:
            await channel.declare_queue(queue, passive=True)
            await consumer.subscribe()  # (refused here where the user may not read it)
        except Exception as exc:
            raise BusError(f"cannot consume from queue {queue}: {exc}") from exc
        self._consumers.add(consumer)
        return consumer

    async def _exchange(self, topic: str) -> Any:
        import aio_pika

        exchange = self._exchanges.get(topic)
        if exchange is None:
            exchange = await self._live(self._fast).declare_exchange(
                topic, aio_pika.ExchangeType.FANOUT, durable=False)
            self._exchanges[topic] = exchange
        return exchange

    async def broadcast(
        self, topic: str, body: bytes, *, headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        import aio_pika

        try:
            exchange = await self._exchange(topic)
            # (no confirms: a refusal closes the channel after, and the next one raises;
            # not mandatory: a topic nobody listens to yet drops the message, and
            # aio-pika's default would have the broker return it to a channel with no
            # handler for returns, which aiormq logs as an error)
            await exchange.publish(aio_pika.Message(body, headers=dict(headers or {}),
                                                    expiration=ttl_s),
                                   routing_key="", mandatory=False)
        except Exception as exc:
            raise BusError(f"cannot publish on topic {topic}: {exc}") from exc

    async def subscribe(self, topic: str, handler: TopicHandler) -> Subscription:
        try:
            exchange = await self._exchange(topic)
            channel = await self._live(self._connection).channel()
            # Bounded: a subscriber that falls behind loses the oldest messages (drop-head).
            queue = await channel.declare_queue(
                names.subscription_queue(topic, uuid.uuid4().hex), exclusive=True,
                auto_delete=True, arguments={"x-max-length": _TOPIC_BACKLOG})
            await queue.bind(exchange)
        except Exception as exc:
            raise BusError(f"cannot subscribe to topic {topic}: {exc}") from exc

        async def on_message(message: Any) -> None:
            headers = {k: str(v) for k, v in (message.headers or {}).items()}
            await handler(TopicMessage(message.body, headers))

        tag = await queue.consume(on_message, no_ack=True)
        return _TopicSubscription(channel, queue, tag)


_TOPIC_BACKLOG = 10_000


