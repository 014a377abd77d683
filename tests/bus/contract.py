"""The bus contract: one suite, subclassed once per backend (the kombu way)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmos.bus import Bus, Delivery, QueueOptions, TopicMessage
from llmos.errors import BusError, QueueFull
from tests.waiting import eventually


class BusContract:
    """Subclasses provide ``url``; every test gets a fresh, connected bus."""

    url: str

    def make_bus(self) -> Bus:
        from llmos.bus import open_bus

        return open_bus(self.url)

    @pytest_asyncio.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        bus = self.make_bus()
        await bus.connect()
        try:
            yield bus
        finally:
            for name in self.created:
                await bus.delete_queue(name)
            await bus.close()

    @pytest.fixture(autouse=True)
    def _unique_names(self) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.created: dict[str, None] = {}

    def q(self, name: str) -> str:
        """A queue or topic name unique to this test."""
        full = f"test.{name}.{self.suffix}"
        self.created[full] = None
        return full

    @pytest.mark.asyncio
    async def test_publish_and_consume(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("basic"))
        got: list[Delivery] = []

        async def handler(d: Delivery) -> None:
            got.append(d)
            await d.ack()

        await bus.consume(self.q("basic"), handler, prefetch=1)
        await bus.publish(self.q("basic"), b"hello", headers={"x-request-id": "r1"})
        await eventually(lambda: got)
        assert got[0].body == b"hello"
        assert got[0].headers["x-request-id"] == "r1"
        assert got[0].delivery_count == 1

    @pytest.mark.asyncio
    async def test_a_bus_not_connected_or_closed_says_so(self) -> None:
        """Every operation raises BusError (never an AttributeError on a handle the
        backend has not opened, or has closed)."""
        bus = self.make_bus()

        async def handler(_: object) -> None: ...

        async def each() -> None:
            for operation in (lambda: bus.declare_queue(f"nc.{self.suffix}"),
                              lambda: bus.publish(f"nc.{self.suffix}", b"x"),
                              lambda: bus.consume(f"nc.{self.suffix}", handler, prefetch=1),
                              lambda: bus.broadcast(f"nc.t.{self.suffix}", b"x"),
                              lambda: bus.subscribe(f"nc.t.{self.suffix}", handler)):
                with pytest.raises(BusError):
                    await operation()

        await each()
        await bus.connect()
        await bus.close()
        await each()

    @pytest.mark.asyncio
    async def test_a_delivery_is_settled_once(self, bus: Bus) -> None:
        # The first ack or nack counts: a nack after an ack does not bring it back, nor
        # does an ack after a requeue take the redelivery away.
        await bus.declare_queue(self.q("once"))
        got: list[Delivery] = []

        async def handler(d: Delivery) -> None:
            got.append(d)
            if len(got) == 1:
                await d.ack()
                await d.nack(requeue=True)
            else:
                await d.nack(requeue=False)
                await d.ack()

        await bus.consume(self.q("once"), handler, prefetch=1)
        await bus.publish(self.q("once"), b"a")
        await bus.publish(self.q("once"), b"b")
        await eventually(lambda: len(got) >= 2)
        await asyncio.sleep(0.3)  # (a wrong redelivery would come by now)
        # (In either order: Kafka deals a queue's messages over its partitions.)
        assert sorted(d.body for d in got) == [b"a", b"b"]
        assert all(d.settled for d in got)

    @pytest.mark.asyncio
    async def test_unroutable_publish_raises(self, bus: Bus) -> None:
        with pytest.raises(BusError) as info:
            await bus.publish(self.q("never-declared"), b"x")
        assert not isinstance(info.value, QueueFull)

    @pytest.mark.asyncio
    async def test_prefetch_bounds_unacked_deliveries(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("prefetch"))
        held: list[Delivery] = []

        async def handler(d: Delivery) -> None:
            held.append(d)

        sub = await bus.consume(self.q("prefetch"), handler, prefetch=2)
        for i in range(5):
            await bus.publish(self.q("prefetch"), str(i).encode())
        await eventually(lambda: len(held) == 2)
        await asyncio.sleep(0.1)
        assert len(held) == 2
        await held[0].ack()
        await eventually(lambda: len(held) == 3)
        await sub.set_prefetch(4)
        await eventually(lambda: len(held) == 5)

    @pytest.mark.asyncio
    async def test_a_paused_consumer_takes_no_more_but_settles_what_it_holds(
            self, bus: Bus) -> None:
        await bus.declare_queue(self.q("pause"))
        held: list[Delivery] = []

        async def hold(d: Delivery) -> None:
            held.append(d)

        subscription = await bus.consume(self.q("pause"), hold, prefetch=1)
        await bus.publish(self.q("pause"), b"1")
        await eventually(lambda: len(held) == 1)
        await subscription.pause()
        await bus.publish(self.q("pause"), b"2")
        await held[0].ack()  # still valid after the pause
        await asyncio.sleep(0.3)
        assert [d.body for d in held] == [b"1"]
        got: list[bytes] = []

        async def take(d: Delivery) -> None:
            got.append(d.body)
            await d.ack()

        await bus.consume(self.q("pause"), take, prefetch=4)
        # ("1" was acked: never again)
        await eventually(lambda: got == [b"2"], timeout_s=5 + self.regroup_s)
        await subscription.cancel()

    regroup_s = 0.0
    """How much longer a backend takes to hand a queue to a consumer that joins after
    another left (Kafka: a consumer-group rebalance)."""

    orders_within_a_queue = True
    """False for Kafka: a queue spreads over partitions, and order holds only within
    one (a deployment's requests need no order; the docs say so)."""

    @pytest.mark.asyncio
    async def test_ordering_within_a_queue(self, bus: Bus) -> None:
        if not self.orders_within_a_queue:
            pytest.skip("this backend orders messages only within a partition of a queue")
        await bus.declare_queue(self.q("order"))
        got: list[bytes] = []

        async def handler(d: Delivery) -> None:
            got.append(d.body)
            await d.ack()

        for i in range(50):
            await bus.publish(self.q("order"), str(i).encode())
        await bus.consume(self.q("order"), handler, prefetch=1)
        await eventually(lambda: len(got) == 50)
        assert got == [str(i).encode() for i in range(50)]

    @pytest.mark.asyncio
    async def test_unacked_message_of_a_gone_consumer_is_redelivered(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("redeliver"))
        first: list[Delivery] = []
        second: list[Delivery] = []

        async def hold(d: Delivery) -> None:
            first.append(d)

        async def take(d: Delivery) -> None:
            second.append(d)
            await d.ack()

        dying = await bus.consume(self.q("redeliver"), hold, prefetch=1)
        await bus.publish(self.q("redeliver"), b"job")
        await eventually(lambda: first)
        await bus.consume(self.q("redeliver"), take, prefetch=1)
        await asyncio.sleep(0.1)
        assert not second, "a live consumer's message must not be redelivered"
        await dying.cancel()
        await eventually(lambda: second, timeout_s=5 + self.regroup_s)
        assert second[0].body == b"job"
        assert second[0].delivery_count == 2

    long_hold_s = 3.0
    """How long the live-consumer case holds a message (backends with an ack timer
    set it above that timer, to show the timer is renewed)."""

    @pytest.mark.asyncio
    async def test_a_live_consumer_holding_a_long_request_keeps_it(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("long"))
        first: list[Delivery] = []
        second: list[bytes] = []

        async def slow(d: Delivery) -> None:
            first.append(d)
            await asyncio.sleep(self.long_hold_s)  # a long generation
            await d.ack()

        async def other(d: Delivery) -> None:
            second.append(d.body)
            await d.ack()

        await bus.consume(self.q("long"), slow, prefetch=1)
        await bus.publish(self.q("long"), b"long")
        await eventually(lambda: len(first) == 1)
        await bus.consume(self.q("long"), other, prefetch=1)
        await asyncio.sleep(self.long_hold_s + 0.5)
        assert second == []  # never redelivered while its consumer lives
        assert len(first) == 1

    @pytest.mark.asyncio
    async def test_request_reply_with_a_streamed_answer(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("requests"))
        await bus.declare_queue(self.q("replies"), QueueOptions(durable=False, exclusive=True))

        async def responder(d: Delivery) -> None:
            reply_to = d.headers["reply-to"]
            for i in range(5):
                await bus.publish(reply_to, d.body + b":" + str(i).encode(), durable=False,
                                  confirm=i == 4)
            await d.ack()

        chunks: list[bytes] = []

        async def on_reply(d: Delivery) -> None:
            chunks.append(d.body)

        await bus.consume(self.q("requests"), responder, prefetch=4)
        await bus.consume(self.q("replies"), on_reply, prefetch=64, auto_ack=True)
        await bus.publish(self.q("requests"), b"ask", headers={"reply-to": self.q("replies")})
        await eventually(lambda: len(chunks) == 5)
        # Unconfirmed chunks arrive in order. The confirmed last one may overtake them on
        # a backend that confirms on another channel (RabbitMQ): reply chunks carry a
        # sequence number, and the gateway reads them by it.
        assert sorted(chunks) == [b"ask:0", b"ask:1", b"ask:2", b"ask:3", b"ask:4"]
        assert [c for c in chunks if c != b"ask:4"] == [b"ask:0", b"ask:1", b"ask:2", b"ask:3"]

    @pytest.mark.asyncio
    async def test_competing_consumers_share_the_load(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("compete"))
        counts = {"a": 0, "b": 0}

        def handler(name: str):  # type: ignore[no-untyped-def]
            async def handle(d: Delivery) -> None:
                counts[name] += 1
                await asyncio.sleep(0.01)
                await d.ack()
            return handle

        await bus.consume(self.q("compete"), handler("a"), prefetch=1)
        await bus.consume(self.q("compete"), handler("b"), prefetch=1)
        for i in range(20):
            await bus.publish(self.q("compete"), str(i).encode())
        await eventually(lambda: counts["a"] + counts["b"] == 20)
        assert counts["a"] >= 5 and counts["b"] >= 5

    @pytest.mark.asyncio
    async def test_expired_messages_are_not_delivered(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("ttl"))
        got: list[bytes] = []

        async def handler(d: Delivery) -> None:
            got.append(d.body)
            await d.ack()

        await bus.publish(self.q("ttl"), b"stale", ttl_s=0.05)
        await bus.publish(self.q("ttl"), b"fresh", ttl_s=30)
        await asyncio.sleep(0.2)
        await bus.consume(self.q("ttl"), handler, prefetch=1)
        await eventually(lambda: got)
        await asyncio.sleep(0.1)
        assert got == [b"fresh"]

    @pytest.mark.asyncio
    async def test_dead_letter_after_the_delivery_limit(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("poison"), QueueOptions(
            delivery_limit=2, dead_letter_queue=self.q("poison.dead")))
        dead: list[Delivery] = []
        attempts = 0

        async def reject(d: Delivery) -> None:
            nonlocal attempts
            attempts += 1
            await d.nack(requeue=True)

        async def morgue(d: Delivery) -> None:
            dead.append(d)
            await d.ack()

        await bus.consume(self.q("poison"), reject, prefetch=1)
        await bus.consume(self.q("poison.dead"), morgue, prefetch=1)
        await bus.publish(self.q("poison"), b"poison")
        await eventually(lambda: dead)
        assert attempts == 2
        assert dead[0].body == b"poison"

    @pytest.mark.asyncio
    async def test_a_rejected_message_is_dead_lettered_where_its_queue_has_one(
            self, bus: Bus) -> None:
        """``nack(requeue=False)`` means one thing on every backend (a worker rejects a
        request it cannot decode): to the dead-letter queue at once, else dropped."""
        await bus.declare_queue(self.q("bad"), QueueOptions(
            delivery_limit=5, dead_letter_queue=self.q("bad.dead")))
        await bus.declare_queue(self.q("bad.nodead"))
        dead: list[bytes] = []
        attempts: list[bytes] = []

        async def reject(d: Delivery) -> None:
            attempts.append(d.body)
            await d.nack(requeue=False)

        async def morgue(d: Delivery) -> None:
            dead.append(d.body)
            await d.ack()

        await bus.consume(self.q("bad"), reject, prefetch=1)
        await bus.consume(self.q("bad.nodead"), reject, prefetch=1)
        await bus.consume(self.q("bad.dead"), morgue, prefetch=1)
        await bus.publish(self.q("bad"), b"unreadable")
        await bus.publish(self.q("bad.nodead"), b"dropped")
        await eventually(lambda: dead and len(attempts) == 2, timeout_s=15)
        await asyncio.sleep(0.3)
        assert dead == [b"unreadable"]
        assert sorted(attempts) == [b"dropped", b"unreadable"]  # each once: not requeued

    @pytest.mark.asyncio
    async def test_one_mebibyte_message(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("big"))
        payload = bytes(range(256)) * 4096
        got: list[bytes] = []

        async def handler(d: Delivery) -> None:
            got.append(d.body)
            await d.ack()

        await bus.consume(self.q("big"), handler, prefetch=1)
        await bus.publish(self.q("big"), payload)
        await eventually(lambda: got)
        assert got[0] == payload

    @pytest.mark.asyncio
    async def test_queue_length_limit(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("bounded"), QueueOptions(max_length=2))
        await bus.publish(self.q("bounded"), b"1")
        await bus.publish(self.q("bounded"), b"2")
        # Quorum queues enforce the limit a little late, so allow a small overshoot.
        with pytest.raises(QueueFull):
            for i in range(3, 13):
                await bus.publish(self.q("bounded"), str(i).encode())
                await asyncio.sleep(0.02)

    reconnect_is_silent = False
    """True for a backend where nothing is bound to a connection (Redis: streams and
    pending entries live in the server and commands retry on a new connection): it
    has nothing to tell its reconnect handlers, so the cases only check it resumes."""

    async def wait_for_reconnect(self, reconnected: asyncio.Event) -> None:
        if not self.reconnect_is_silent:
            await asyncio.wait_for(reconnected.wait(), 60)

    async def cut_connection(self, bus: Bus) -> None:
        """Kill the client's connection to the broker (backends with one override this)."""
        pytest.skip("an in-process bus has no connection to cut")

    @pytest.mark.asyncio
    async def test_resumes_after_the_connection_is_cut(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("resume"))
        got: list[bytes] = []
        reconnected = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d.body)
            await d.ack()

        async def on_reconnect() -> None:
            reconnected.set()

        bus.on_reconnect(on_reconnect)
        await bus.consume(self.q("resume"), handler, prefetch=1)
        await bus.publish(self.q("resume"), b"before")
        await eventually(lambda: got == [b"before"])
        await self.cut_connection(bus)
        await self.wait_for_reconnect(reconnected)
        await bus.publish(self.q("resume"), b"after")
        await eventually(lambda: b"after" in got, timeout_s=15)
        # At least once: an ack still on its way when the connection died is lost, and
        # the broker hands "before" out again.
        assert set(got) == {b"before", b"after"}

    async def restart_broker(self) -> None:
        """Stop and start the broker (backends with one override this)."""
        pytest.skip("an in-process bus has no broker to restart")

    @pytest.mark.asyncio
    async def test_resumes_after_the_broker_restarts(self, bus: Bus) -> None:
        await bus.declare_queue(self.q("live"))
        await bus.declare_queue(self.q("kept"))
        got: list[bytes] = []
        reconnected = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d.body)
            await d.ack()

        async def on_reconnect() -> None:
            reconnected.set()

        bus.on_reconnect(on_reconnect)
        await bus.consume(self.q("live"), handler, prefetch=1)
        await bus.publish(self.q("live"), b"before")
        await bus.publish(self.q("kept"), b"durable")  # nobody consumes it yet
        await eventually(lambda: got == [b"before"])
        await self.restart_broker()
        await self.wait_for_reconnect(reconnected)
        await bus.publish(self.q("live"), b"after")
        await eventually(lambda: b"after" in got, timeout_s=15)
        # A durable message published before the restart is still there after it.
        await bus.consume(self.q("kept"), handler, prefetch=1)
        await eventually(lambda: b"durable" in got, timeout_s=15)
        # (At least once: "before" may come again if its ack died with the broker.)
        assert set(got) == {b"before", b"after", b"durable"}

    @pytest.mark.asyncio
    async def test_broadcast_reaches_every_subscriber(self, bus: Bus) -> None:
        got: dict[str, list[bytes]] = {"a": [], "b": []}

        def handler(name: str):  # type: ignore[no-untyped-def]
            async def handle(m: TopicMessage) -> None:
                got[name].append(m.body)
            return handle

        await bus.subscribe(self.q("cancel"), handler("a"))
        sub_b = await bus.subscribe(self.q("cancel"), handler("b"))
        await bus.broadcast(self.q("cancel"), b"stop r1")
        await eventually(lambda: got["a"] and got["b"])
        await sub_b.cancel()
        await bus.broadcast(self.q("cancel"), b"stop r2")
        await eventually(lambda: len(got["a"]) == 2)
        await asyncio.sleep(0.05)
        assert got["b"] == [b"stop r1"]
