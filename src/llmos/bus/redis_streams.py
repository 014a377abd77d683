"""Redis Streams backend (``redis://host:port/db``) through redis-py's asyncio client.

* A queue is a stream ``llmos:q:<name>`` with one consumer group; each
  subscription is a consumer of that group and reads with ``XREADGROUP`` as many
  entries as it has room for (its prefetch less what it holds unacked).
* An ack is ``XACK`` + ``XDEL``, so a stream holds only waiting and unacked
  entries and stays within the queue's length limit (checked before ``XADD``;
  the limit may overshoot by the publishes racing the check).
* A delivery counter travels in the entry (``n``: earlier deliveries). A nack
  with requeue, a cancelled subscription's unacked entries, and the entries of
  a consumer that died are moved: ``XADD`` of a copy with ``n + 1`` and ``XACK`` +
  ``XDEL`` of the original, in one transaction; at the delivery limit the copy
  goes to the dead-letter queue instead.
* A live consumer renews its unacked entries (``XCLAIM`` of its own, resetting
  their idle time) every few seconds; others take over (``XAUTOCLAIM``) only
  entries idle longer than ``CLAIM_IDLE_S``: those of a consumer that is gone.
* Queue settings (length limit, delivery limit, dead-letter queue) live in a hash
  ``llmos:qmeta:<name>`` written by ``declare_queue``, so every publisher applies
  them, and publishing to a queue nobody declared raises.
* Message TTL: the expiry travels in the entry and expired entries are dropped
  on read, never handed to a handler.
* Topics are pub/sub channels ``llmos:t:<topic>``: fire-and-forget, and Redis
  disconnects a subscriber that falls far behind (its pub/sub output buffer
  limit), so nothing piles up.
* Replies (exclusive queues) are streams too, read without acks (``NOACK``), and
  expire ten minutes after their consumer last read them.
* A lost connection loses nothing here: streams, groups and pending entries live
  in Redis, not in the connection, and a command that meets a dead connection is
  retried on a new one. So the reconnect handlers (which exist for brokers whose
  deliveries and reply queues die with a connection) are never called.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import Mapping
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
    requeue_all,
    safe_url,
)
from llmos.bus.prefetch import PrefetchConsumer
from llmos.errors import BusError, QueueFull

log = logging.getLogger(__name__)

GROUP = "llmos"
CLAIM_IDLE_S = 10.0
"""An unacked entry idle this long belongs to a consumer that is gone."""
RENEW_S = 3.0
EXCLUSIVE_TTL_S = 600
_BLOCK_MS = 500


def _stream(name: str) -> str:
    return f"llmos:q:{name}"


def _meta(name: str) -> str:
    return f"llmos:qmeta:{name}"


def _channel(topic: str) -> str:
    return f"llmos:t:{topic}"


def _is_connection_error(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)


class _RedisDelivery(Delivery):
    def __init__(self, consumer: _StreamConsumer, entry_id: bytes,
                 fields: Mapping[bytes, bytes]) -> None:
        self._consumer = consumer
        self.entry_id = entry_id
        self.fields = dict(fields)
        self.body = fields.get(b"b", b"")
        self.headers = json.loads(fields.get(b"h", b"{}") or b"{}")
        self.earlier = int(fields.get(b"n", b"0") or 0)
        self.delivery_count = self.earlier + 1
        self.settled = consumer.auto_ack

    async def _settle(self, outcome: Outcome) -> None:
        await self._consumer.settle(self, outcome)


class _StreamConsumer(PrefetchConsumer):
    def __init__(self, bus: RedisBus, queue: str, handler: DeliveryHandler, *,
                 prefetch: int, auto_ack: bool) -> None:
        super().__init__(queue, handler, prefetch)
        self.bus = bus
        self.key = _stream(queue)
        self.auto_ack = auto_ack
        self.name = f"c-{uuid.uuid4().hex[:12]}"
        self.unacked: dict[bytes, _RedisDelivery] = {}

    def holding(self) -> int:
        return len(self.unacked)

    async def pause(self) -> None:
        self.paused = True
        await self.stop_loop()

    async def _give_back(self) -> None:
        await requeue_all(self.unacked.values())
        self.unacked.clear()

    async def _forget(self) -> None:
        with contextlib.suppress(ValueError):
            self.bus._consumers.remove(self)  # (a replica's own queue: one per start)
        with contextlib.suppress(Exception):
            await self.bus.redis.xgroup_delconsumer(self.key, GROUP, self.name)

    async def settle(self, delivery: _RedisDelivery, outcome: Outcome) -> None:
        self.unacked.pop(delivery.entry_id, None)
        self.wake()
        try:
            if outcome != "ack":  # again, or (rejected) to the dead-letter queue if any
                await self.bus.move(self.queue, delivery.entry_id, delivery.fields,
                                    rejected=outcome == "reject")
            else:
                pipe = self.bus.redis.pipeline(transaction=False)
                pipe.xack(self.key, GROUP, delivery.entry_id)
                pipe.xdel(self.key, delivery.entry_id)
                await pipe.execute()
        except Exception as exc:
            if not _is_connection_error(exc):
                raise
            # It stays pending: after CLAIM_IDLE_S another consumer takes it over.
            log.warning("could not settle a delivery (connection lost?): %s", exc)

    async def _run(self) -> None:
        backoff = 0.1
        last_renew = last_claim = time.monotonic()
        while True:
            try:
                now = time.monotonic()
                if self.unacked and now - last_renew > RENEW_S:
                    await self.bus.redis.xclaim(self.key, GROUP, self.name, 0,
                                                list(self.unacked), justid=True)
                    last_renew = now
                room = self.room if not self.auto_ack else 256
                if room <= 0:
                    await self.wait(RENEW_S)
                    continue
                if not self.auto_ack and now - last_claim > 1.0:
                    last_claim = now
                    await self._take_over_the_gone(room)
                if self.auto_ack:
                    await self.bus.redis.expire(self.key, EXCLUSIVE_TTL_S)
                answer = await self.bus.redis.xreadgroup(
                    GROUP, self.name, {self.key: ">"}, count=room, block=_BLOCK_MS,
                    noack=self.auto_ack)
                backoff = 0.1
                for _, entries in answer or ():
                    for entry_id, fields in entries:
                        await self._dispatch(entry_id, fields)
                if answer:
                    await asyncio.sleep(0)  # let the handlers run (and ack) before reading on
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    log.info("queue %s was deleted: its consumer stops", self.queue)
                    return
                if _is_connection_error(exc):
                    log.warning("redis consumer of %s: %s; retrying", self.queue, exc)
                else:
                    log.exception("redis consumer of %s failed", self.queue)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _take_over_the_gone(self, room: int) -> None:
        """Entries idle past CLAIM_IDLE_S belong to a dead consumer: deliver them again."""
        answer = await self.bus.redis.xautoclaim(
            self.key, GROUP, self.name, int(CLAIM_IDLE_S * 1000), "0-0", count=room)
        for entry_id, fields in answer[1]:
            if fields:  # (None for an entry deleted meanwhile)
                await self.bus.move(self.queue, entry_id, fields)

    async def _dispatch(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> None:
        expires = fields.get(b"e")
        if expires and float(expires) < time.time():
            if not self.auto_ack:
                pipe = self.bus.redis.pipeline(transaction=True)
                pipe.xack(self.key, GROUP, entry_id)
                pipe.xdel(self.key, entry_id)
                await pipe.execute()
            return
        delivery = _RedisDelivery(self, entry_id, fields)
        if not self.auto_ack:
            self.unacked[entry_id] = delivery
        self.hand(delivery)


class _TopicSubscription(UnackedSubscription):
    def __init__(self, bus: RedisBus, topic: str, handler: TopicHandler) -> None:
        self.bus = bus
        self.channel = _channel(topic)
        self.handler = handler
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"redis topic {self.channel}")
        await asyncio.wait_for(self._ready.wait(), 10)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.bus.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._ready.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    # redis-py waits with a timeout that, on 3.11, can swallow a cancel
                    # arriving as it expires: honour the cancel it swallowed (else this
                    # loop outlives every cancel, as it hung asyncio.run's last one in CI).
                    if _cancel_swallowed():
                        raise asyncio.CancelledError
                    if message is None or message.get("type") != "message":
                        continue
                    headers, body = _unframe(message["data"])
                    task = asyncio.create_task(self.handler(TopicMessage(body, headers)))
                    self.bus.background(task)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not _is_connection_error(exc):
                    log.exception("redis subscriber of %s failed", self.channel)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def cancel(self) -> None:
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()  # (again, if a read swallowed the last one)
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.warning("redis subscriber of %s ended: %s", self.channel, task.exception())


def _cancel_swallowed() -> bool:
    """Whether the running task was asked to stop, yet the await just done returned."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _frame(headers: Mapping[str, str] | None, body: bytes) -> bytes:
    encoded = json.dumps(dict(headers or {})).encode()
    return len(encoded).to_bytes(4, "big") + encoded + body


def _unframe(data: bytes) -> tuple[dict[str, str], bytes]:
    size = int.from_bytes(data[:4], "big")
    headers: dict[str, str] = json.loads(data[4:4 + size])
    return headers, data[4 + size:]


class RedisBus(Bus):
    def __init__(self, url: str) -> None:
        self.url = url
        self._redis: Any = None
        self._meta: dict[str, dict[bytes, bytes]] = {}
        self._consumers: list[_StreamConsumer] = []
        self._subscriptions: weakref.WeakSet[_TopicSubscription] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def redis(self) -> Any:
        return self._live(self._redis)

    async def connect(self) -> None:
        from redis.asyncio import ConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        # A command that meets a dead pooled connection is retried on a new one (a
        # retried XADD may add twice: delivery is at-least-once anyway).
        # Every blocked XREADGROUP holds a connection for up to 0.5 s, and a burst of
        # publishes takes one each: a roomy pool (the blocking kind costs a timer per
        # command).
        pool = ConnectionPool.from_url(
            self.url, max_connections=4096, socket_connect_timeout=5,
            health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError])
        self._redis = Redis(connection_pool=pool)
        try:
            await self._redis.ping()
        except Exception as exc:
            await self._redis.aclose()
            await pool.disconnect()
            self._redis = None
            raise BusError(f"cannot connect to Redis at {safe_url(self.url)}: {exc}") from exc

    async def close(self) -> None:
        # Topic subscriptions first: a pub/sub read whose connection the pool's
        # disconnect pulls away never ends, not even when cancelled (it hung asyncio.run's
        # final cancel in CI).
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        for consumer in list(self._consumers):
            await consumer.stop_loop()
        for task in list(self._tasks):
            task.cancel()
        if self._redis is not None:
            await self._redis.aclose()
            await self._redis.connection_pool.disconnect()  # (a pool we made ourselves)
            self._redis = None

    def background(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def create_group(self, key: str) -> None:
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _declare_queue(self, name: str, opts: QueueOptions) -> None:
        try:
            await self.create_group(_stream(name))
            meta = {"max_length": opts.max_length or 0,
                    "delivery_limit": opts.delivery_limit or 0,
                    "dead_letter_queue": opts.dead_letter_queue or ""}
            await self.redis.hset(_meta(name), mapping=meta)
            if opts.exclusive:
                await self.redis.expire(_stream(name), EXCLUSIVE_TTL_S)
                await self.redis.expire(_meta(name), EXCLUSIVE_TTL_S * 6)
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot declare queue {name} on Redis: {exc}") from exc
        self._meta.pop(name, None)

    async def delete_queue(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.redis.delete(_stream(name), _meta(name))
        self._meta.pop(name, None)

    async def _settings(self, name: str) -> dict[bytes, bytes]:
        meta = self._meta.get(name)
        if meta is None:
            meta = await self.redis.hgetall(_meta(name))
            if not meta:
                raise BusError(f"queue {name} does not exist (message unroutable)")
            self._meta[name] = meta
        return meta

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
        # Every command waits for Redis's answer: each publish is confirmed.
        try:
            meta = await self._settings(queue)
            limit = int(meta.get(b"max_length", b"0") or 0)
            if limit and await self.redis.xlen(_stream(queue)) >= limit:
                raise QueueFull(f"queue {queue} is full ({limit} messages)")
            fields: dict[str, Any] = {"b": body, "n": 0}
            if headers:
                fields["h"] = json.dumps(dict(headers))
            if ttl_s is not None:
                fields["e"] = repr(time.time() + ttl_s)
            await self.redis.xadd(_stream(queue), fields)
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot publish to {queue} on Redis: {exc}") from exc

    async def move(self, queue: str, entry_id: bytes, fields: Mapping[bytes, bytes], *,
                   rejected: bool = False) -> None:
        """Deliver an entry again (one more earlier delivery), or dead-letter it (at the
        delivery limit, or ``rejected``; dropped where the queue has no dead-letter
        queue)."""
        meta = await self._settings(queue)
        earlier = int(fields.get(b"n", b"0") or 0) + 1
        limit = int(meta.get(b"delivery_limit", b"0") or 0)
        dead = (meta.get(b"dead_letter_queue") or b"").decode()
        copy = {k.decode(): v for k, v in fields.items()}
        if rejected or (limit and earlier >= limit):
            log.warning("message dead-lettered from %s %s", queue,
                        "rejected" if rejected else f"after {earlier} deliveries")
            target = dead or None
            copy["n"] = b"0"
        else:
            target = queue
            copy["n"] = str(earlier).encode()
        pipe = self.redis.pipeline(transaction=True)
        if target is not None:
            pipe.xadd(_stream(target), copy)
        pipe.xack(_stream(queue), GROUP, entry_id)
        pipe.xdel(_stream(queue), entry_id)
        await pipe.execute()

    async def consume(
        self, queue: str, handler: DeliveryHandler, *, prefetch: int, auto_ack: bool = False
    ) -> Subscription:
        try:
            await self._settings(queue)
        except BusError as exc:
            raise BusError(f"cannot consume from queue {queue}: {exc.message}") from exc
        consumer = _StreamConsumer(self, queue, handler, prefetch=prefetch, auto_ack=auto_ack)
        self._consumers.append(consumer)
        consumer.start_loop()
        return consumer

    async def broadcast(
        self, topic: str, body: bytes, *, headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        # Pub/sub delivers at once or not at all: nothing waits long enough to expire.
        try:
            await self.redis.publish(_channel(topic), _frame(headers, body))
        except Exception as exc:
            raise BusError(f"cannot broadcast on {topic} on Redis: {exc}") from exc

    async def subscribe(self, topic: str, handler: TopicHandler) -> Subscription:
        self._live(self._redis)  # (not connected: say so now, not after its 10 s start)
        subscription = _TopicSubscription(self, topic, handler)
        await subscription.start()
        self._subscriptions.add(subscription)
        return subscription
