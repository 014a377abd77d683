"""NATS backend (``nats://host:4222``): JetStream for queues, core NATS for the rest.

* A queue is a JetStream stream with work-queue retention (an acked message is
  gone) on the subject ``llmos.q.<name>``, and one durable pull consumer that all
  of the queue's subscribers share: JetStream's ``MaxAckPending`` is per consumer,
  so each subscriber bounds itself instead, asking the consumer for only as many
  messages as it has room for (its prefetch less what it holds unacked), one pull
  request at a time.
* Acks are explicit. A subscriber sends ``in_progress`` for what it holds every
  third of the consumer's ``AckWait``, so a live worker's long generation is never
  redelivered; the messages of a dead one are, once ``AckWait`` passes.
* The delivery limit is the consumer's ``MaxDeliver``. When a message reaches it,
  JetStream publishes a max-deliveries advisory; the queue's subscribers listen
  for it in a queue group (so one of them acts), copy the message to the
  dead-letter queue and delete it from the stream.
* Queue settings (length limit as the stream's ``max_msgs`` with discard-new, the
  delivery limit, the dead-letter queue) are kept in the stream's description.
* Message TTL travels in a header; expired messages are acked unread.
* Exclusive queues (a gateway's replies) and topics are plain core-NATS subjects:
  nothing is stored. A publish that asks for a confirm is a core request that the
  receiving subscriber answers, so it fails when nobody listens.
* NATS refuses messages over its max payload (1 MiB by default, headers
  included): a larger body is put in a JetStream object store bucket (which splits
  it into chunks) and the message carries its name; the receiver reads it back and
  deletes it once the message is settled.
* After a reconnect, deliveries held are still valid (acks are plain publishes to
  the server's ack subjects), but core messages sent meanwhile are lost, so the
  reconnect handlers are called.

Settings in the URL's query: ``ack_wait_s`` (default 10), e.g.
``nats://127.0.0.1:4222?ack_wait_s=30``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from llmos.bus.base import (
    Bus,
    Delivery,
    DeliveryHandler,
    Outcome,
    QueueOptions,
    Subscription,
    TopicHandler,
    UnackedSubscription,
    requeue_all,
    safe_url,
)
from llmos.bus.envelope import Running, hand_unacked, is_expired, public, with_expiry
from llmos.bus.prefetch import PrefetchConsumer
from llmos.errors import BusError, ConfigError, QueueFull

log = logging.getLogger(__name__)

CONSUMER = "llmos"
DLQ_GROUP = "llmos-dead-letters"
LARGE_BUCKET = "llmos-large"
DEFAULT_ACK_WAIT_S = 10.0
PULL_EXPIRES_S = 5.0
PUBLISH_TIMEOUT_S = 10.0
FIRST_CONNECT_S = 6.0
"""How long the first connection may take (one attempt's 5 s, and slack)."""
H_LARGE = "llmos-large"
H_CONFIRM = "llmos-confirm"
_HEADROOM = 8192  # bytes kept free under max_payload for headers and protocol


def subject(name: str) -> str:
    return f"llmos.q.{name}"


def topic_subject(topic: str) -> str:
    return f"llmos.t.{topic}"


def stream_name(name: str) -> str:
    """A valid stream name for a queue name (no dots), unique by a short hash."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:180]
    return f"LLMOS_{readable}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


class _JetStreamDelivery(Delivery):
    def __init__(self, consumer: _PullConsumer, msg: Any, body: bytes) -> None:
        self._consumer = consumer
        self.msg = msg
        self.body = body
        self.headers = public(msg.headers)
        self.large = (msg.headers or {}).get(H_LARGE)
        self.delivery_count = msg.metadata.num_delivered

    async def _settle(self, outcome: Outcome) -> None:
        await self._consumer.settle(self, _JS_SETTLE[outcome])


_JS_SETTLE = {"ack": "ack", "requeue": "nak", "reject": "term"}
"""JetStream's words for each outcome."""


class _PullConsumer(PrefetchConsumer):
    def __init__(self, bus: NatsBus, queue: str, handler: DeliveryHandler, *,
                 prefetch: int) -> None:
        super().__init__(queue, handler, prefetch)
        self.bus = bus
        self.stream = stream_name(queue)
        self.held: dict[int, _JetStreamDelivery] = {}
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{CONSUMER}"
        self._inbox = ""
        self._sub: Any = None
        self._outstanding = 0  # messages the pull request in flight may still bring
        self._pull_deadline = 0.0

    def holding(self) -> int:
        return len(self.held)

    async def start(self) -> None:
        nc = self.bus.nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_message,
                                       pending_msgs_limit=-1, pending_bytes_limit=-1)
        self.start_loop()

    def reset_pull(self) -> None:
        """The connection was restored: a pull request in flight may be gone with it."""
        self._outstanding = 0
        self.wake()

    async def pause(self) -> None:
        # No more pull requests, and none in flight can deliver (its inbox is gone);
        # what is held is still renewed and can be settled.
        self.paused = True
        await self._unsubscribe()
        self.wake()

    async def _close_intake(self) -> None:
        await self._unsubscribe()

    async def _give_back(self) -> None:
        await requeue_all(self.held.values())

    async def _forget(self) -> None:
        self.bus.forget(self)

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._outstanding = 0

    async def settle(self, delivery: _JetStreamDelivery, how: str) -> None:
        """(Claimed already.)"""
        self.held.pop(id(delivery), None)
        self.wake()
        try:
            if how == "ack":
                await delivery.msg.ack()
            elif how == "nak":
                await delivery.msg.nak()
            else:  # rejected: to the dead-letter queue, if the queue has one
                dead = str((await self.bus._queue_settings(self.queue)).get(
                    "dead_letter_queue") or "")
                if dead:
                    log.warning("message dead-lettered from %s: rejected", self.queue)
                    await self.bus.js.publish(subject(dead), delivery.msg.data or b"",
                                              headers=delivery.msg.headers or None,
                                              stream=stream_name(dead))
                await delivery.msg.term()
                if dead:
                    return  # (a large body stays: the dead letter names it)
            if delivery.large and how != "nak":
                await self.bus.drop_large(delivery.large)
        except Exception as exc:
            # Unsettled, it comes back after AckWait: at least once.
            log.warning("could not settle a delivery from %s: %s", self.queue, exc)

    async def _run(self) -> None:
        renew_every = self.bus.ack_wait_s / 3
        last_renew = time.monotonic()
        while True:
            try:
                now = time.monotonic()
                if self.held and now - last_renew >= renew_every:
                    last_renew = now
                    for delivery in list(self.held.values()):
                        await delivery.msg.in_progress()
                if self._outstanding and now > self._pull_deadline:
                    self._outstanding = 0  # its answer (a 408) was lost
                room = self.room
                if room > 0 and not self._outstanding and self.bus.connected:
                    self._outstanding = room
                    self._pull_deadline = now + PULL_EXPIRES_S + 2
                    request = {"batch": room, "expires": int(PULL_EXPIRES_S * 1e9)}
                    await self.bus.nc.publish(self._next, json.dumps(request).encode(),
                                              reply=self._inbox)
                await self.wait(min(renew_every, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("nats consumer of %s: %s; retrying", self.queue, exc)
                self._outstanding = 0
                await asyncio.sleep(0.5)

    async def _on_message(self, msg: Any) -> None:
        status = (msg.headers or {}).get("Status")
        if status:
            if status != "100":  # 404/408/409: the pull request is over
                self._outstanding = 0
                self.wake()
            return
        self._outstanding = max(0, self._outstanding - 1)
        if self.paused:  # (cancelled too)
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        if is_expired(msg.headers):
            with contextlib.suppress(Exception):
                await msg.ack()
            return
        large = (msg.headers or {}).get(H_LARGE)
        body = await self.bus.read_large(large) if large else msg.data
        delivery = _JetStreamDelivery(self, msg, body)
        self.held[id(delivery)] = delivery
        self.hand(delivery)


class _CoreSubscription(UnackedSubscription):
    """A subscriber of an exclusive queue or of a topic (core NATS, at most once)."""

    def __init__(self, bus: NatsBus, subject_name: str,
                 deliver: DeliveryHandler | TopicHandler, *, topic: bool) -> None:
        self.bus = bus
        self.subject = subject_name
        self.deliver = deliver
        self.topic = topic
        self._sub: Any = None
        self._running = Running()

    async def start(self) -> None:
        # A subscriber that falls far behind loses messages; it never blocks a sender.
        self._sub = await self.bus.nc.subscribe(self.subject, cb=self._on_message,
                                                pending_msgs_limit=100_000)

    async def _on_message(self, msg: Any) -> None:
        headers = dict(msg.headers or {})
        if msg.reply and headers.get(H_CONFIRM):
            with contextlib.suppress(Exception):
                await self.bus.nc.publish(msg.reply, b"")
        if is_expired(headers):
            return
        large = headers.get(H_LARGE)
        body = msg.data
        if large:
            body = await self.bus.read_large(large)
            await self.bus.drop_large(large)
        self._running.spawn(hand_unacked(self.deliver, is_topic=self.topic, body=body,
                                         headers=headers))

    async def cancel(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class NatsBus(Bus):
    deliveries_survive_reconnect = True

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            self.ack_wait_s = float(query.get("ack_wait_s", [DEFAULT_ACK_WAIT_S])[0])
        except ValueError as exc:
            raise ConfigError(f"bus URL {safe_url(url)}: ack_wait_s must be a number of seconds") \
                from exc
        # nats+tls://: TLS, the server's certificate checked against the system's trust
        # store (SSL_CERT_FILE for a private CA), as nats-py does for tls://.
        scheme = "tls" if parts.scheme == "nats+tls" else parts.scheme
        self._server = urlunsplit((scheme, parts.netloc, "", "", ""))
        self._nc: Any = None
        self._js: Any = None
        self._large: Any = None
        self._exclusive: set[str] = set()
        self._consumers: list[_PullConsumer] = []
        self._advisories: dict[str, Any] = {}
        self._running = Running()
        self._closing = False

    @property
    def nc(self) -> Any:
        return self._live(self._nc)

    @property
    def js(self) -> Any:
        return self._live(self._js)

    @property
    def connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def connect(self) -> None:
        import nats

        async def on_error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        async def on_disconnected() -> None:
            if self._closing:
                return
            log.warning("lost the connection to NATS at %s; reconnecting",
                        safe_url(self._server))

        async def on_reconnected() -> None:
            log.info("reconnected to NATS at %s", safe_url(self._server))
            for consumer in list(self._consumers):
                consumer.reset_pull()
            self._background(self._notify_reconnect())

        try:
            # With reconnects unbounded (for later), nats-py would also retry the first
            # connection forever: a wrong address must fail instead.
            self._nc = await asyncio.wait_for(nats.connect(
                servers=[self._server], connect_timeout=5, allow_reconnect=True,
                max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                error_cb=on_error, disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected), FIRST_CONNECT_S)
        except TimeoutError:
            raise BusError(f"cannot connect to NATS at {safe_url(self._server)}: no answer "
                           f"within {FIRST_CONNECT_S:g} s") from None
        except Exception as exc:
            raise BusError(f"cannot connect to NATS at {safe_url(self._server)}: {exc}") from exc
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        try:
            await self._js.account_info()
        except Exception as exc:
            await self._nc.close()
            self._nc = self._js = None
            raise BusError(f"NATS at {safe_url(self._server)} has no JetStream (start it "
                           f"with -js): {exc}") from exc

    async def close(self) -> None:
        self._closing = True
        for consumer in list(self._consumers):
            await consumer.cancel()
        self._running.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = self._js = None

    def _background(self, coro: Any) -> None:
        self._running.spawn(coro)

    def forget(self, consumer: _PullConsumer) -> None:
        with contextlib.suppress(ValueError):
            self._consumers.remove(consumer)

    # -- large bodies ---------------------------------------------------------

    def _too_large(self, body: bytes, headers: Mapping[str, str]) -> bool:
        size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        return size > int(self.nc.max_payload) - _HEADROOM

    async def _large_store(self) -> Any:
        if self._large is None:
            from nats.js.api import ObjectStoreConfig, StorageType
            from nats.js.errors import BucketNotFoundError

            try:
                self._large = await self.js.object_store(LARGE_BUCKET)
            except BucketNotFoundError:
                # (nats-py takes the bucket's name from its own argument, not the config)
                self._large = await self.js.create_object_store(
                    LARGE_BUCKET, config=ObjectStoreConfig(
                    bucket=LARGE_BUCKET, ttl=86400, storage=StorageType.FILE,
                    description="bodies of LLMOS messages over the max payload"))
        return self._large

    async def _put_large(self, body: bytes) -> str:
        name = uuid.uuid4().hex
        store = await self._large_store()
        await store.put(name, body)
        return name

    async def read_large(self, name: str) -> bytes:
        store = await self._large_store()
        result = await store.get(name)
        return bytes(result.data or b"")

    async def drop_large(self, name: str) -> None:
        with contextlib.suppress(Exception):
            store = await self._large_store()
            await store.delete(name)

    # -- queues ---------------------------------------------------------------

    async def _declare_queue(self, name: str, opts: QueueOptions) -> None:
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            DiscardPolicy,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )
        from nats.js.errors import BadRequestError

        if opts.exclusive:
            self._exclusive.add(name)  # a core subject: nothing to create
            return
        settings = {"queue": name, "delivery_limit": opts.delivery_limit or 0,
                    "dead_letter_queue": opts.dead_letter_queue or ""}
        config = StreamConfig(
            name=stream_name(name), subjects=[subject(name)],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE if opts.durable else StorageType.MEMORY,
            max_msgs=opts.max_length or -1, discard=DiscardPolicy.NEW,
            description=json.dumps(settings), num_replicas=1)
        try:
            try:
                await self.js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != 10058:  # (exists with another configuration)
                    raise
                log.warning("queue %s exists with other settings; keeping them", name)
            consumer = ConsumerConfig(
                durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s, max_deliver=opts.delivery_limit or -1,
                max_ack_pending=-1, max_waiting=4096, filter_subject=subject(name))
            try:
                await self.js.add_consumer(stream_name(name), consumer)
            except BadRequestError as exc:
                if exc.err_code not in (10013, 10148):  # (exists with another config)
                    raise
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot declare queue {name} on NATS: {exc}") from exc

    async def delete_queue(self, name: str) -> None:
        self._exclusive.discard(name)
        with contextlib.suppress(Exception):
            await self.js.delete_stream(stream_name(name))

    async def _queue_settings(self, name: str) -> dict[str, Any]:
        try:
            info = await self.js.stream_info(stream_name(name))
        except Exception as exc:
            raise BusError(f"queue {name} does not exist on NATS: {exc}") from exc
        settings: dict[str, Any] = json.loads(info.config.description or "{}")
        return settings

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
        from nats.errors import NoRespondersError
        from nats.js.errors import APIError

        sent = with_expiry(headers, ttl_s)
        try:
            if self._too_large(body, sent):
                sent[H_LARGE] = await self._put_large(body)
                body = b""
            if durable and queue not in self._exclusive:
                # Into the stream, and JetStream's ack says it is stored.
                await self.js.publish(subject(queue), body, headers=sent or None,
                                      stream=stream_name(queue))
            elif confirm:
                # Answered by the stream (a PubAck) or by the exclusive queue's reader.
                sent[H_CONFIRM] = "1"
                await self.nc.request(subject(queue), body, timeout=PUBLISH_TIMEOUT_S,
                                      headers=sent)
            else:
                await self.nc.publish(subject(queue), body, headers=sent or None)
        except NoRespondersError as exc:
            raise BusError(f"queue {queue} does not exist (message unroutable)") from exc
        except APIError as exc:
            if exc.err_code == 10077 or "maximum messages" in str(exc.description):
                raise QueueFull(f"queue {queue} is full") from exc
            raise BusError(f"cannot publish to {queue} on NATS: {exc}") from exc
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot publish to {queue} on NATS: {exc}") from exc

    async def consume(
        self, queue: str, handler: DeliveryHandler, *, prefetch: int, auto_ack: bool = False
    ) -> Subscription:
        if queue in self._exclusive or auto_ack:
            core = _CoreSubscription(self, subject(queue), handler, topic=False)
            await core.start()
            return core
        settings = await self._queue_settings(queue)
        if settings.get("delivery_limit") and queue not in self._advisories:
            await self._watch_max_deliveries(queue, settings)
        consumer = _PullConsumer(self, queue, handler, prefetch=prefetch)
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def _watch_max_deliveries(self, queue: str, settings: Mapping[str, Any]) -> None:
        stream = stream_name(queue)
        dead = str(settings.get("dead_letter_queue") or "")

        async def on_advisory(msg: Any) -> None:
            try:
                sequence = int(json.loads(msg.data)["stream_seq"])
                stored = await self.js.get_msg(stream, sequence)
                headers = dict(stored.headers or {})
                log.warning("message dead-lettered from %s after %s deliveries", queue,
                            json.loads(msg.data).get("deliveries"))
                if dead:
                    await self.js.publish(subject(dead), stored.data or b"",
                                          headers=headers or None, stream=stream_name(dead))
                elif headers.get(H_LARGE):
                    await self.drop_large(headers[H_LARGE])
                await self.js.delete_msg(stream, sequence)
            except Exception as exc:
                log.warning("could not dead-letter a message of %s: %s", queue, exc)

        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{CONSUMER}"
        self._advisories[queue] = await self.nc.subscribe(advisory, queue=DLQ_GROUP,
                                                          cb=on_advisory)

    # -- topics ---------------------------------------------------------------

    async def broadcast(
        self, topic: str, body: bytes, *, headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        sent = with_expiry(headers, ttl_s)
        try:
            await self.nc.publish(topic_subject(topic), body, headers=sent or None)
        except Exception as exc:
            raise BusError(f"cannot broadcast on {topic} on NATS: {exc}") from exc

    async def subscribe(self, topic: str, handler: TopicHandler) -> Subscription:
        subscription = _CoreSubscription(self, topic_subject(topic), handler, topic=True)
        await subscription.start()
        return subscription
