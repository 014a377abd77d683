"""The dispatcher with prefix-aware routing, over the in-process bus, with stand-in
replicas that each consume the shared queue and their own, and answer as a worker does
(the final chunk names the replica's queue)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmos.bus import Delivery, names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Heartbeat, InferenceRequest, ReplyBatch, ReplyChunk, decode, encode
from llmos.gateway.affinity import PrefixRouter
from llmos.gateway.dispatch import Dispatcher, ReplicaFailed, RequestHandle
from tests.waiting import eventually

HISTORY = [{"role": "system", "content": "You answer in one word. " * 60},
           {"role": "user", "content": "Colour of the sky?"}]


class Replica:
    """Answers each request with one text chunk and a final one; ``silent`` takes
    requests and never answers (a replica about to die), ``partial`` stops after text."""

    def __init__(self, bus: MemoryBus, name: str, slots: int = 2) -> None:
        self.bus, self.name, self.slots = bus, name, slots
        self.route = names.direct_queue("m", name.ljust(12, "0"))
        self.served: list[tuple[str, int]] = []  # (request id, attempt)
        self.mode = "answer"

    async def start(self) -> None:
        await self.bus.declare_queue(self.route, names.DIRECT_QUEUE_OPTIONS)
        await self.bus.consume(self.route, self._take, prefetch=self.slots)
        await self.bus.consume(names.infer_queue("m"), self._take, prefetch=self.slots)

    def heartbeat(self, *, prefixes: list[str] | None = None, leaving: bool = False,
                  busy: int = 0) -> Heartbeat:
        return Heartbeat(worker_id=self.name, epoch="e", deployment="m", host="h",
                         slots=self.slots, busy=busy, sent_at=time.time(), interval_s=5,
                         leaving=leaving, route=self.route, prefixes=prefixes or [])

    async def _take(self, delivery: Delivery) -> None:
        request = decode(InferenceRequest, delivery.body)
        attempt = request.attempt_base + delivery.delivery_count
        self.served.append((request.request_id, attempt))
        if self.mode == "silent":
            return
        chunks = [ReplyChunk(request_id=request.request_id, attempt=attempt, seq=0,
                             text=self.name)]
        if self.mode == "answer":
            chunks.append(ReplyChunk(request_id=request.request_id, attempt=attempt, seq=1,
                                     final=True, served_by=self.route))
        await self.bus.publish(request.reply_to, encode(ReplyBatch(chunks=chunks)),
                               durable=False)
        await delivery.ack()


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[tuple[MemoryBus, Dispatcher, list[Replica]]]:
    bus = MemoryBus()
    await bus.connect()
    await bus.declare_queue(names.infer_queue("m"), names.infer_queue_options("m"))
    router = PrefixRouter(min_chars=500)
    dispatcher = Dispatcher(bus, timeout_s=30, router=router, reroute_after_s=0.0)
    await dispatcher.start()
    replicas = [Replica(bus, "a"), Replica(bus, "b")]
    for replica in replicas:
        await replica.start()
        router.observe(replica.heartbeat())
    yield bus, dispatcher, replicas
    await dispatcher.stop()
    await bus.close()


async def chat(dispatcher: Dispatcher, rid: str, messages: list[dict[str, str]],
               stream: bool = False) -> RequestHandle:
    return await dispatcher.submit(request_id=rid, deployment="m", kind="chat",
                                   body={"messages": messages}, stream=stream,
                                   max_tokens_explicit=False)


async def answer(handle: RequestHandle) -> str:
    return "".join([c.text async for c in handle.chunks()])


def next_turn(messages: list[dict[str, str]], reply: str, question: str
              ) -> list[dict[str, str]]:
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": question}]


@pytest.mark.asyncio
async def test_the_turns_of_a_chat_go_to_the_replica_that_answered_the_first(
        setup: tuple[MemoryBus, Dispatcher, list[Replica]]) -> None:
    _, dispatcher, _ = setup
    messages = HISTORY
    first = await answer(await chat(dispatcher, "t0", messages))
    for turn in range(1, 6):
        messages = next_turn(messages, first, f"And {turn}?")
        handle = await chat(dispatcher, f"t{turn}", messages)
        assert handle.route is not None  # sent to a replica's own queue
        assert await answer(handle) == first


@pytest.mark.asyncio
async def test_a_routed_request_whose_replica_left_goes_to_the_shared_queue(
        setup: tuple[MemoryBus, Dispatcher, list[Replica]]) -> None:
    bus, dispatcher, replicas = setup
    a, b = replicas
    assert dispatcher.router is not None
    dispatcher.router.observe(a.heartbeat(prefixes=[]))
    dispatcher.router.learn(
        [(await chat(dispatcher, "probe", HISTORY)).request.prefixes[-1]], a.route,
        time.time())
    await eventually(lambda: len(a.served) + len(b.served) == 1)
    a.mode = "silent"  # it takes the next one and dies with it
    handle = await chat(dispatcher, "lost", next_turn(HISTORY, "x", "y"))
    assert handle.route == a.route
    await eventually(lambda: ("lost", 1) in a.served)
    await bus.delete_queue(a.route)
    dispatcher.router.observe(a.heartbeat(leaving=True))
    await dispatcher.reroute(time.time())
    assert await answer(handle) == "b"  # nothing lost: the other one answered
    assert handle.attempt == 2 and ("lost", 2) in b.served


@pytest.mark.asyncio
async def test_a_routed_stream_part_answered_when_its_replica_left_fails_plainly(
        setup: tuple[MemoryBus, Dispatcher, list[Replica]]) -> None:
    _, dispatcher, replicas = setup
    a, b = replicas
    assert dispatcher.router is not None
    first = await chat(dispatcher, "t0", HISTORY)
    served = await answer(first)
    owner = a if served == "a" else b
    owner.mode = "partial"
    handle = await chat(dispatcher, "t1", next_turn(HISTORY, served, "y"), stream=True)
    assert handle.route == owner.route
    chunks = handle.chunks()
    assert (await anext(chunks)).text == owner.name
    dispatcher.router.observe(owner.heartbeat(leaving=True))
    await dispatcher.reroute(time.time())
    with pytest.raises(ReplicaFailed):
        await anext(chunks)
    await chunks.aclose()


@pytest.mark.asyncio
async def test_a_replica_queue_that_is_gone_sends_the_request_to_the_shared_queue(
        setup: tuple[MemoryBus, Dispatcher, list[Replica]]) -> None:
    bus, dispatcher, replicas = setup
    assert dispatcher.router is not None
    found = await chat(dispatcher, "t0", HISTORY)
    await answer(found)
    for replica in replicas:  # both hold it now; both queues vanish (a kill -9)
        dispatcher.router.learn(found.request.prefixes, replica.route, time.time())
        await bus.delete_queue(replica.route)
    handle = await chat(dispatcher, "t1", next_turn(HISTORY, "x", "y"))
    assert handle.route is None
    assert await asyncio.wait_for(answer(handle), 5) in ("a", "b")


@pytest.mark.asyncio
async def test_a_hot_prefix_spreads_once_its_replica_is_full(
        setup: tuple[MemoryBus, Dispatcher, list[Replica]]) -> None:
    _, dispatcher, replicas = setup
    a, b = replicas
    assert dispatcher.router is not None
    for replica in replicas:
        replica.mode = "silent"  # they hold what they take: the slots fill
    dispatcher.router.learn((await chat(dispatcher, "seed", HISTORY)).request.prefixes,
                            a.route, time.time())
    handles = [await chat(dispatcher, f"h{i}", HISTORY) for i in range(4)]
    routes = [h.route for h in handles]
    assert routes[:2] == [a.route, a.route]  # a has 2 slots; then it is full
    assert routes[2:] == [None, None]  # the shared queue, where b takes them
    await eventually(lambda: {rid for rid, _ in b.served} >= {"h2", "h3"} - {
        rid for rid, _ in a.served})


@pytest.mark.asyncio
async def test_an_answer_that_came_before_its_replica_left_is_not_sent_again(
        setup: tuple[MemoryBus, Dispatcher, list[Replica]]) -> None:
    _, dispatcher, replicas = setup
    assert dispatcher.router is not None
    first = await chat(dispatcher, "t0", HISTORY)
    served = await answer(first)
    owner = replicas[0] if served == "a" else replicas[1]
    handle = await chat(dispatcher, "t1", next_turn(HISTORY, served, "y"))
    assert handle.route == owner.route
    await eventually(lambda: handle.ready())  # its whole answer is here, unread
    dispatcher.router.observe(owner.heartbeat(leaving=True))  # then its goodbye
    await dispatcher.reroute(time.time())
    assert await answer(handle) == owner.name
    assert [rid for rid, _ in owner.served + replicas[1 - replicas.index(owner)].served
            ].count("t1") == 1
