"""Kafka backend (``kafka://host:9092[,host2:9092]``) through aiokafka.

* A queue is a topic ``llmos.q.<name>`` with ``partitions`` partitions (default 8:
  at least the deployment's maximum replicas, since a partition has one reader
  in a group, so competing consumers are bounded by partitions). Messages go to
  the partitions round-robin (each topic in its own turn); order holds only within
  a partition.
* Each queue has one consumer group; a subscription is a member of it. It hands
  out at most its prefetch of records (and pauses its partitions while full).
* Slots finish out of order, so a partition's offset is committed only up to
  its oldest record still in hand: at least once.
* Before a member hands records out, it records how far the partition was
  handed out, as the committed offset of a second group (``<group>.handed-out``) that
  nobody joins. A member that is given a partition treats the records between
  the first group's committed offset and that mark as redeliveries (their
  reader died or left): it puts a copy at the end of the queue with one more
  attempt counted in the ``llmos-attempts`` header (or, past the queue's
  delivery limit, in the dead-letter queue) and commits past the original. A
  nack with requeue does the same. So attempts add up over any number of
  crashes. (Records a dead reader had finished but not yet committed, behind an
  older one it still held, are done again: at least once.)
* When the group rebalances, a member waits for the records it holds on the
  partitions it gives up to be settled before it lets them go, so a live
  worker's request is not handed to another; the cost is that a rebalance
  waits for the longest request in hand.
* Queue settings: the delivery limit and dead-letter queue travel in the
  headers of each message (the publisher's declaration sets them); the length
  limit is checked against the group's backlog (end offsets less committed
  ones), measured at most every half second.
* Message TTL travels in a header; expired records are skipped (committed).
* Exclusive queues (a gateway's replies) and topics are one-partition topics read
  without a group from their end at subscription, all of a bus's through one
  consumer.
* Nothing is bound to a connection: aiokafka reconnects by itself, positions
  live in the broker, so reconnect handlers are never called.

Settings in the URL's query: ``partitions`` (8), ``session_timeout_ms`` (10000),
``fetch_max_wait_ms`` (100; a broker that answers fetches only at their deadline,
as Tansu does, wants it low, at the cost of more polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from llmos.aio import stop_task
from llmos.bus.base import (
    Bus,
    Delivery,
    DeliveryHandler,
    Outcome,
    QueueOptions,
    Subscription,
    TopicHandler,
    UnackedSubscription,
    safe_url,
)
from llmos.bus.envelope import Running, hand_unacked, is_expired, public, with_expiry
from llmos.bus.prefetch import PrefetchConsumer
from llmos.errors import BusError, ConfigError, QueueFull

log = logging.getLogger(__name__)

H_ATTEMPTS = "llmos-attempts"
H_LIMIT = "llmos-limit"
H_DEAD = "llmos-dlq"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BACKLOG_CACHE_S = 0.5
COMMIT_TIMEOUT_S = 10.0


def queue_topic(name: str) -> str:
    return "llmos.q." + _safe(name)


def broadcast_topic(topic: str) -> str:
    return "llmos.t." + _safe(topic)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]


def _headers_out(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in headers.items()]


def _headers_in(record: Any) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in (record.headers or ())}


class _KafkaDelivery(Delivery):
    def __init__(self, consumer: _GroupConsumer, tp: Any, record: Any,
                 headers: dict[str, str]) -> None:
        self._consumer = consumer
        self.tp = tp
        self.offset: int = record.offset
        self.body = record.value or b""
        self.all_headers = headers
        self.headers = public(headers)
        self.delivery_count = int(headers.get(H_ATTEMPTS, "0") or 0) + 1

    async def _settle(self, outcome: Outcome) -> None:
        await self._consumer.settle(
            self, requeue=None if outcome == "ack" else outcome == "requeue")


async def _commit_with_retries(consumer: Any, offsets: dict[Any, Any]) -> None:
    """Commit, again on a lost connection (aiokafka gives up on some, and retries some
    others forever: hence the deadline)."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    async with asyncio.timeout(COMMIT_TIMEOUT_S):
        for attempt in itertools.count():
            try:
                await consumer.commit(offsets)
                return
            except (KafkaConnectionError, KafkaError) as exc:
                retriable = isinstance(exc, KafkaConnectionError) or exc.retriable
                if not retriable or attempt >= 5:
                    raise
                await asyncio.sleep(0.1 * 2 ** attempt)


@dataclass
class _Partition:
    handed_out_upto: int = -1
    """The highest offset handed out (by this member or, before, an earlier owner)."""
    redelivery_upto: int = -1
    """Records up to here were handed out by an earlier owner: redeliveries."""
    held: dict[int, _KafkaDelivery] = field(default_factory=dict)
    committed: int = -1
    marked: int = -1
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def commit_point(self) -> int:
        return min(self.held) if self.held else self.handed_out_upto + 1


class _GroupConsumer(PrefetchConsumer):
    def __init__(self, bus: KafkaBus, queue: str, handler: DeliveryHandler, *,
                 prefetch: int) -> None:
        super().__init__(queue, handler, prefetch)
        self.bus = bus
        self.topic = queue_topic(queue)
        self.partitions: dict[Any, _Partition] = {}
        self._consumer: Any = None
        self._marks: Any = None
        self._assigned = asyncio.Event()
        self._leaving: asyncio.Task[None] | None = None

    def holding(self) -> int:
        return sum(len(p.held) for p in self.partitions.values())

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.abc import ConsumerRebalanceListener

        owner = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await owner._give_up(revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                await owner._take(assigned)

        self._consumer = AIOKafkaConsumer(
            **self.bus.client_options, group_id=f"llmos.{_safe(self.queue)}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=self.bus.fetch_max_wait_ms,
            session_timeout_ms=self.bus.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.bus.session_timeout_ms // 5),
            max_poll_interval_ms=3_600_000, rebalance_timeout_ms=3_600_000,
            fetch_max_bytes=MAX_MESSAGE_BYTES * 2, max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
        self._marks = AIOKafkaConsumer(
            **self.bus.client_options, group_id=f"llmos.{_safe(self.queue)}.handed-out",
            enable_auto_commit=False)
        await self._marks.start()
        # Started before it subscribes, so start() does not wait for the group.
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=Listener())
        self.start_loop()
        # Back once the group gave this member its share (maybe none): from then on,
        # the other members no longer read the partitions it now owns.
        # (Bounded: a rebalance waits for the requests other members hold.)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(10.0, self.bus.session_timeout_ms / 1000)):
                await self._assigned.wait()

    async def _take(self, assigned: Any) -> None:
        for tp in assigned:
            state = _Partition()
            try:
                committed = await self._consumer.committed(tp)
                handed = await self._marks.committed(tp)
                if committed is not None:
                    state.committed = committed
                    state.handed_out_upto = committed - 1
                if handed is not None:
                    state.marked = handed
                    state.handed_out_upto = max(state.handed_out_upto, handed - 1)
                state.redelivery_upto = state.handed_out_upto
            except Exception as exc:
                log.warning("could not read the committed offsets of %s: %s", tp, exc)
            self.partitions[tp] = state
        log.info("kafka consumer of %s now holds partitions [%s] of %s", self.queue,
                 ",".join(str(tp.partition) for tp in sorted(assigned)), self.topic)
        self._assigned.set()

    async def _give_up(self, revoked: Any) -> None:
        """Before the group moves these partitions: wait for what is held on them."""
        for tp in revoked:
            state = self.partitions.get(tp)
            while state is not None and state.held and not self.cancelled:
                state.settled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await state.settled.wait()
            if state is not None and state.held:
                await self._redeliver_held(tp, state)
            self.partitions.pop(tp, None)

    async def _redeliver_held(self, tp: Any, state: _Partition) -> None:
        for delivery in list(state.held.values()):
            if not delivery.claim():
                continue
            with contextlib.suppress(Exception):
                await self.bus.requeue(self.queue, delivery.body, delivery.all_headers)
            state.held.pop(delivery.offset, None)
        try:
            await self._commit(tp, state)
        except Exception as exc:
            log.warning("could not commit %s: %r", tp, exc)

    async def _commit(self, tp: Any, state: _Partition) -> None:
        """Commit up to the oldest record held (slots finish out of order)."""
        from aiokafka.structs import OffsetAndMetadata

        point = state.commit_point()
        if point == state.committed:
            return
        await _commit_with_retries(self._consumer, {tp: OffsetAndMetadata(point, "")})
        state.committed = point

    async def _mark(self, tp: Any, state: _Partition) -> None:
        """Record how far this partition was handed out, in the queue's second group.

        (Kafka's commit metadata could carry it, but Tansu drops that metadata; a
        commit without group membership, in a group nobody joins, works on both.)
        """
        from aiokafka.structs import OffsetAndMetadata

        mark = state.handed_out_upto + 1
        if mark <= state.marked:
            return
        if tp not in self._marks.assignment():
            self._marks.assign([*self._marks.assignment(), tp])
            self._marks.pause(*self._marks.assignment())  # (it only commits, never reads)
        await _commit_with_retries(self._marks, {tp: OffsetAndMetadata(mark, "")})
        state.marked = mark

    async def settle(self, delivery: _KafkaDelivery, *, requeue: bool | None) -> None:
        """(Claimed already.)"""
        try:
            if requeue is not None:
                # requeue: a copy at the end with one more attempt (or dead-lettered);
                # no requeue: dead-lettered if the queue has a dead-letter queue.
                await self.bus.requeue(self.queue, delivery.body, delivery.all_headers,
                                       give_up=not requeue)
        finally:
            state = self.partitions.get(delivery.tp)
            if state is not None:
                state.held.pop(delivery.offset, None)
                try:
                    await self._commit(delivery.tp, state)
                except Exception as exc:
                    # The record comes again to whoever reads the partition next.
                    log.warning("could not commit %s: %r", delivery.tp, exc)
                # (only now: a member that leaves once all is settled must not cut
                # this commit short)
                state.settled.set()
                self.wake()

    async def pause(self) -> None:
        # No more hand-outs; once what it holds is settled it leaves the group, so
        # its partitions go to the members still consuming.
        if not self.paused:
            self.paused = True
            self._leaving = asyncio.create_task(self._leave_when_settled())

    async def _leave_when_settled(self) -> None:
        while self.holding() and not self.cancelled:
            await self.wait(1.0)
        if not self.cancelled:
            # (stop, not unsubscribe: it sends LeaveGroup, so the group moves on at once)
            await self.stop_loop()
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    async def _give_back(self) -> None:
        # One attempt more, partition by partition, each committed past what went back.
        for tp, state in list(self.partitions.items()):
            if state.held:
                await self._redeliver_held(tp, state)

    async def _forget(self) -> None:
        for client in (self._consumer, self._marks):
            with contextlib.suppress(Exception):
                await client.stop()
        self.bus.forget(self)

    async def _run(self) -> None:
        consumer = self._consumer
        while True:
            try:
                room = self.room
                assigned = list(consumer.assignment())
                if room <= 0:
                    consumer.pause(*assigned)
                else:
                    consumer.resume(*assigned)
                batch = await consumer.getmany(timeout_ms=200, max_records=max(1, room))
                for tp, records in batch.items():
                    if self.paused and records:
                        # (paused while it fetched: leave them to the next reader)
                        consumer.seek(tp, records[0].offset)
                        continue
                    await self._hand_out(tp, records)
                if self.room <= 0:
                    await self.wait(0.2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("kafka consumer of %s: %s; retrying", self.queue, exc)
                await asyncio.sleep(0.5)

    async def _hand_out(self, tp: Any, records: list[Any]) -> None:
        state = self.partitions.get(tp)
        if not records:
            return
        if state is None:
            # Fetched before the assignment callback finished: read them again later.
            self._consumer.seek(tp, records[0].offset)
            return
        fresh: list[_KafkaDelivery] = []
        again: list[_KafkaDelivery] = []
        for record in records:
            headers = _headers_in(record)
            delivery = _KafkaDelivery(self, tp, record, headers)
            state.handed_out_upto = max(state.handed_out_upto, record.offset)
            if is_expired(headers):
                continue
            state.held[record.offset] = delivery
            if record.offset <= state.redelivery_upto:
                again.append(delivery)
            else:
                fresh.append(delivery)
        # What is handed out is on record before any handler starts on it.
        await self._mark(tp, state)
        await self._commit(tp, state)
        for delivery in again:  # their earlier reader is gone
            await delivery.nack(requeue=True)
        for delivery in fresh:
            self.hand(delivery)


class _Tail(UnackedSubscription):
    """A subscriber of an exclusive queue or a topic, read by the bus's tail reader."""

    def __init__(self, reader: _TailReader, topic: str,
                 deliver: DeliveryHandler | TopicHandler, *, is_topic: bool) -> None:
        self.reader = reader
        self.topic = topic
        self.deliver = deliver
        self.is_topic = is_topic

    async def cancel(self) -> None:
        await self.reader.remove(self)


class _TailReader:
    """One group-less consumer that reads every one-partition topic a bus listens to."""

    def __init__(self, bus: KafkaBus) -> None:
        self.bus = bus
        self.tails: dict[str, list[_Tail]] = {}
        self._consumer: Any = None
        self._changes: asyncio.Queue[tuple[str, asyncio.Future[None]]] = asyncio.Queue()
        self._loop: asyncio.Task[None] | None = None
        self._running = Running()

    async def add(self, tail: _Tail) -> None:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            self._consumer = AIOKafkaConsumer(
                **self.bus.client_options, group_id=None, enable_auto_commit=False,
                auto_offset_reset="latest", fetch_max_wait_ms=self.bus.fetch_max_wait_ms,
                fetch_max_bytes=MAX_MESSAGE_BYTES * 2,
                max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
            await self._consumer.start()
            self._loop = asyncio.create_task(self._run(), name="kafka tail reader")
        first = tail.topic not in self.tails
        self.tails.setdefault(tail.topic, []).append(tail)
        if first:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._changes.put((tail.topic, done))
            await done

    async def remove(self, tail: _Tail) -> None:
        tails = self.tails.get(tail.topic, [])
        if tail in tails:
            tails.remove(tail)
        if not tails and tail.topic in self.tails:
            del self.tails[tail.topic]
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._changes.put((tail.topic, done))
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await done

    async def close(self) -> None:
        if self._loop is not None:
            await stop_task(self._loop)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    async def _reassign(self) -> None:
        """Apply the changes asked for, keeping every kept partition's position."""
        from aiokafka import TopicPartition

        changed: list[asyncio.Future[None]] = []
        while not self._changes.empty():
            changed.append(self._changes.get_nowait()[1])
        consumer = self._consumer
        try:
            before = {tp: await consumer.position(tp) for tp in consumer.assignment()}
            wanted = [TopicPartition(t, 0) for t in self.tails]
            consumer.assign(wanted)
            for tp in wanted:
                if tp in before:
                    consumer.seek(tp, before[tp])
                else:
                    await consumer.seek_to_end(tp)
                    await consumer.position(tp)  # resolved now: later records are seen
            for done in changed:
                if not done.done():
                    done.set_result(None)
        except Exception as exc:
            for done in changed:
                if not done.done():
                    done.set_exception(BusError(f"cannot subscribe on Kafka: {exc}"))

    async def _run(self) -> None:
        while True:
            try:
                if not self._changes.empty():
                    await self._reassign()
                if not self.tails:
                    await asyncio.sleep(0.05)
                    continue
                batch = await self._consumer.getmany(timeout_ms=100)
                for tp, records in batch.items():
                    for record in records:
                        self._dispatch(tp.topic, record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("kafka tail reader: %s; retrying", exc)
                await asyncio.sleep(0.5)

    def _dispatch(self, topic: str, record: Any) -> None:
        headers = _headers_in(record)
        if is_expired(headers):
            return
        body = record.value or b""
        for tail in list(self.tails.get(topic, ())):
            self._running.spawn(hand_unacked(tail.deliver, is_topic=tail.is_topic, body=body,
                                             headers=headers))


class KafkaBus(Bus):
    deliveries_survive_reconnect = True

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        try:
            self.partitions = int(query.get("partitions", 8))
            self.session_timeout_ms = int(query.get("session_timeout_ms", 10000))
            self.fetch_max_wait_ms = int(query.get("fetch_max_wait_ms", 100))
        except ValueError as exc:
            raise ConfigError(f"bus URL {safe_url(url)}: partitions, session_timeout_ms and "
                              "fetch_max_wait_ms must be whole numbers") from exc
        if not parts.netloc:
            raise ConfigError(f"bus URL {safe_url(url)} names no broker (kafka://host:9092)")
        if "@" in parts.netloc:
            raise ConfigError(f"bus URL {safe_url(url)}: credentials in a kafka:// URL (SASL) "
                              "are not supported yet; use a broker that needs none")
        self.client_options: dict[str, Any] = {"bootstrap_servers": parts.netloc.split(",")}
        if parts.scheme == "kafka+ssl":
            # TLS, the brokers' certificates checked against the system's trust store
            # (SSL_CERT_FILE for a private CA).
            import ssl

            self.client_options |= {"security_protocol": "SSL",
                                    "ssl_context": ssl.create_default_context()}
        self._producer: Any = None
        self._admin: Any = None
        self._tail: _TailReader | None = None
        self._topics: set[str] = set()
        self._options: dict[str, QueueOptions] = {}
        self._consumers: list[_GroupConsumer] = []
        self._next_partition: dict[str, itertools.count[int]] = {}
        """A counter per topic: one shared by all would deal the partitions of a queue
        unevenly whenever a publisher alternates between queues."""
        self._backlog: dict[str, tuple[float, int]] = {}
        self._stats: Any = None

    @property
    def producer(self) -> Any:
        return self._live(self._producer)

    @property
    def admin(self) -> Any:
        return self._live(self._admin)

    async def connect(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        try:
            self._admin = AIOKafkaAdminClient(**self.client_options)
            await self._admin.start()
            self._producer = AIOKafkaProducer(
                **self.client_options, acks="all", linger_ms=0,
                max_request_size=MAX_MESSAGE_BYTES)
            await self._producer.start()
            self._topics = set(await self._admin.list_topics())
        except Exception as exc:
            await self.close()
            raise BusError(f"cannot connect to Kafka at {safe_url(self.url)}: {exc}") from exc

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        if self._tail is not None:
            await self._tail.close()
            self._tail = None
        for client in (self._stats, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
        self._producer = self._admin = self._stats = None

    def forget(self, consumer: _GroupConsumer) -> None:
        with contextlib.suppress(ValueError):
            self._consumers.remove(consumer)

    async def _ensure_topic(self, topic: str, partitions: int) -> None:
        from aiokafka.admin import NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        if topic in self._topics:
            return
        try:
            await self.admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                      replication_factor=1)])
        except TopicAlreadyExistsError:
            pass
        self._topics.add(topic)

    async def _declare_queue(self, name: str, opts: QueueOptions) -> None:
        try:
            await self._ensure_topic(queue_topic(name), 1 if opts.exclusive else self.partitions)
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot declare queue {name} on Kafka: {exc}") from exc
        self._options[name] = opts

    async def delete_queue(self, name: str) -> None:
        topic = queue_topic(name)
        for consumer in [c for c in self._consumers if c.queue == name]:
            await consumer.cancel()
        self._options.pop(name, None)
        self._topics.discard(topic)
        with contextlib.suppress(Exception):
            await self.admin.delete_topics([topic])

    async def _known(self, topic: str) -> bool:
        if topic not in self._topics:
            self._topics = set(await self.admin.list_topics())
        return topic in self._topics

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
        sent = with_expiry(headers, ttl_s)
        opts = self._options.get(queue)
        if opts is not None:
            if opts.delivery_limit:
                sent[H_LIMIT] = str(opts.delivery_limit)
            if opts.dead_letter_queue:
                sent[H_DEAD] = opts.dead_letter_queue
        try:
            if opts is not None and opts.max_length:
                await self._check_backlog(queue, opts.max_length)
            await self._send(queue_topic(queue), body, sent,
                             wait=durable or bool(confirm))
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot publish to {queue} on Kafka: {exc}") from exc

    async def _send(self, topic: str, body: bytes, headers: Mapping[str, str], *,
                    wait: bool) -> None:
        if not await self._known(topic):
            raise BusError(f"queue or topic {topic} does not exist (message unroutable)")
        partitions = await self.producer.partitions_for(topic)
        turn = next(self._next_partition.setdefault(topic, itertools.count()))
        partition = sorted(partitions)[turn % len(partitions)]
        future = await self.producer.send(topic, body, partition=partition,
                                          headers=_headers_out(headers))
        if wait:
            await future  # acknowledged by every in-sync replica (acks=all)

    async def requeue(self, queue: str, body: bytes, headers: Mapping[str, str], *,
                      give_up: bool = False) -> None:
        """Put a copy at the end of the queue, one attempt more; or dead-letter it."""
        copy = dict(headers)
        attempts = int(copy.get(H_ATTEMPTS, "0") or 0) + 1
        opts = self._options.get(queue)
        limit = (opts.delivery_limit if opts else None) or int(copy.get(H_LIMIT, "0") or 0)
        dead = (opts.dead_letter_queue if opts else None) or copy.get(H_DEAD) or ""
        if give_up or (limit and attempts >= limit):
            if not dead:
                log.warning("message dropped from %s after %d deliveries", queue, attempts)
                return
            log.warning("message dead-lettered from %s after %d deliveries", queue, attempts)
            for key in (H_ATTEMPTS, H_LIMIT, H_DEAD):
                copy.pop(key, None)
            await self._send(queue_topic(dead), body, copy, wait=True)
            return
        copy[H_ATTEMPTS] = str(attempts)
        await self._send(queue_topic(queue), body, copy, wait=True)

    async def _check_backlog(self, queue: str, limit: int) -> None:
        """Refuse a publish while the queue's group has ``limit`` records to go."""
        now = time.monotonic()
        measured_at, backlog = self._backlog.get(queue, (0.0, 0))
        if now - measured_at > BACKLOG_CACHE_S:
            backlog = await self._measure_backlog(queue)
        if backlog >= limit:
            self._backlog[queue] = (measured_at if now - measured_at <= BACKLOG_CACHE_S
                                    else now, backlog)
            raise QueueFull(f"queue {queue} is full ({limit} messages)")
        self._backlog[queue] = (now if now - measured_at > BACKLOG_CACHE_S else measured_at,
                                backlog + 1)

    async def _measure_backlog(self, queue: str) -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        if self._stats is None:
            self._stats = AIOKafkaConsumer(**self.client_options, group_id=None,
                                           enable_auto_commit=False)
            await self._stats.start()
        topic = queue_topic(queue)
        partitions = await self.producer.partitions_for(topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await self._stats.end_offsets(tps)
        committed = await self._committed(queue, tps)
        return sum(max(0, ends[tp] - committed.get(tp, 0)) for tp in tps)

    async def _committed(self, queue: str, tps: list[Any]) -> dict[Any, int]:
        for consumer in self._consumers:
            if consumer.queue == queue:
                offsets = await consumer._consumer._coordinator.fetch_committed_offsets(tps)
                return {tp: max(0, o.offset) for tp, o in offsets.items()}
        return {}  # (nobody here reads it: count from the start)

    async def consume(
        self, queue: str, handler: DeliveryHandler, *, prefetch: int, auto_ack: bool = False
    ) -> Subscription:
        topic = queue_topic(queue)
        if not await self._known(topic):
            raise BusError(f"cannot consume from queue {queue}: it does not exist")
        opts = self._options.get(queue)
        if auto_ack or (opts is not None and opts.exclusive):
            tail = _Tail(self._tail_reader(), topic, handler, is_topic=False)
            await tail.reader.add(tail)
            return tail
        consumer = _GroupConsumer(self, queue, handler, prefetch=prefetch)
        self._consumers.append(consumer)
        await consumer.start()
        return consumer

    def _tail_reader(self) -> _TailReader:
        if self._tail is None:
            self._tail = _TailReader(self)
        return self._tail

    async def broadcast(
        self, topic: str, body: bytes, *, headers: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        sent = with_expiry(headers, ttl_s)
        try:
            await self._ensure_topic(broadcast_topic(topic), 1)
            await self._send(broadcast_topic(topic), body, sent, wait=False)
        except BusError:
            raise
        except Exception as exc:
            raise BusError(f"cannot broadcast on {topic} on Kafka: {exc}") from exc

    async def subscribe(self, topic: str, handler: TopicHandler) -> Subscription:
        try:
            await self._ensure_topic(broadcast_topic(topic), 1)
        except Exception as exc:
            raise BusError(f"cannot subscribe to {topic} on Kafka: {exc}") from exc
        tail = _Tail(self._tail_reader(), broadcast_topic(topic), handler, is_topic=True)
        await tail.reader.add(tail)
        return tail
