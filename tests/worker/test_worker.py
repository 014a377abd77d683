"""Worker + dispatcher over the memory bus, with the real engine and model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_asyncio

from llmos.bus import TopicMessage, names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Command, Heartbeat, ReplyChunk, decode, encode
from llmos.engines import EngineConfig, load_engine
from llmos.engines.base import (
    CannotMerge,
    Engine,
    EngineEvent,
    GenerationResult,
    TextDelta,
)
from llmos.gateway.dispatch import Dispatcher, ReplicaFailed, RequestHandle
from llmos.observability.metrics import REGISTRY
from llmos.worker.worker import Worker
from tests.model import gemma_path
from tests.waiting import eventually

SLOTS = 4
PROMPT = "Numbers: 1, 2, 3, 4, 5, 6,"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = gemma_path(tmp_path_factory)
    loaded = load_engine("llama.cpp", EngineConfig(model_path=path, slots=SLOTS, ctx_size=1024,
                                                   threads=2))
    yield loaded
    loaded.close()


@pytest_asyncio.fixture
async def dispatcher(bus: MemoryBus) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(bus, timeout_s=60)
    await d.start()
    yield d
    await d.stop()


async def submit(dispatcher: Dispatcher, rid: str, *, max_tokens: int = 8,
                 stream: bool = False) -> RequestHandle:
    return await dispatcher.submit(
        request_id=rid, deployment="m", kind="completion",
        body={"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0},
        stream=stream, max_tokens_explicit=True)


async def collect(handle: RequestHandle) -> list[ReplyChunk]:
    return [c async for c in handle.chunks()]


def text(chunks: list[ReplyChunk]) -> str:
    return "".join(c.text for c in chunks)


# Prompts whose greedy continuations are clear-cut, so batch numerics cannot tip them.
LIKE_PROMPTS = ["Numbers: 1, 2, 3, 4, 5, 6,", "Numbers: 10, 11, 12, 13, 14,",
                "Letters: a, b, c, d, e, f,", "Days: Monday, Tuesday, Wednesday,"]


async def submit_prompt(dispatcher: Dispatcher, rid: str, prompt: str, *, max_tokens: int = 8,
                        stream: bool = False) -> RequestHandle:
    return await dispatcher.submit(
        request_id=rid, deployment="m", kind="completion",
        body={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        stream=stream, max_tokens_explicit=True)


@pytest.mark.asyncio
async def test_request_reply_through_the_bus(engine: Engine, bus: MemoryBus,
                                             dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m")
    await worker.start()
    try:
        chunks = await collect(await submit(dispatcher, "r1", stream=True))
    finally:
        await worker.stop()
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.attempt == 1 for c in chunks)
    final = chunks[-1]
    assert final.final and final.usage is not None
    assert final.usage.completion_tokens == 8
    assert "".join(c.text for c in chunks[:-1]).strip().startswith("7")


@pytest.mark.asyncio
async def test_the_engine_runs_at_most_its_slots_at_once(engine: Engine, bus: MemoryBus,
                                         dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m")
    await worker.start()
    peak = 0
    handles = [await submit(dispatcher, f"p{i}", max_tokens=12) for i in range(3 * SLOTS)]
    results = asyncio.gather(*(collect(h) for h in handles))
    while not results.done():
        peak = max(peak, worker.busy_slots)
        await asyncio.sleep(0.005)
    await worker.stop()
    assert peak == SLOTS
    assert all(r[-1].error is None for r in results.result())


@pytest.mark.asyncio
async def test_the_engine_holds_one_request_on_standby_and_starts_it_as_a_slot_frees(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    """One request beyond the slots goes to llama.cpp, which starts it when a slot frees;
    one cancelled while on standby ends without a token, and nothing leaks."""
    def cancelled() -> float:
        return REGISTRY.get_sample_value("llmos_worker_requests_total",
                                         {"deployment": "m", "outcome": "cancelled"}) or 0.0

    before = cancelled()
    worker = Worker(bus, engine, "m")
    await worker.start()
    try:
        long = [await submit(dispatcher, f"s-long{i}", max_tokens=48) for i in range(SLOTS - 1)]
        short = await submit(dispatcher, "s-short", max_tokens=6)
        gone = await submit(dispatcher, "s-gone", max_tokens=8)  # on standby in the engine
        after = await submit(dispatcher, "s-after", max_tokens=8)  # waits in the queue
        places = worker._engine_slots
        await eventually(lambda: places.in_use == SLOTS + 1, what="a request on standby")
        assert worker.busy_slots == SLOTS
        collecting = [asyncio.ensure_future(collect(h)) for h in (*long, short, after)]
        await gone.close()  # its client went away while it was on standby
        answers = await asyncio.wait_for(asyncio.gather(*collecting), 60)
    finally:
        await worker.stop()
    assert all(a[-1].error is None for a in answers)
    assert [a[-1].usage.completion_tokens for a in answers if a[-1].usage] == \
        [48] * (SLOTS - 1) + [6, 8]
    assert worker._engine_slots.in_use == 0 and not worker._cancels_book
    assert cancelled() == before + 1  # stopped as it started, not run to its end


@pytest.mark.asyncio
@pytest.mark.parametrize("leaves", ["connection lost", "stopped"])
async def test_a_request_of_a_replica_that_leaves_is_answered_whole_by_another(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher, leaves: str) -> None:
    """Its connection lost (a kill -9): the broker hands what it held to another. Stopped:
    its stop ends the generation and gives the request back, counted as requeued, not as
    cancelled (nobody cancelled it). Either way the other replica answers it whole."""
    def counted(outcome: str) -> float:
        return REGISTRY.get_sample_value("llmos_worker_requests_total",
                                         {"deployment": "m", "outcome": outcome}) or 0.0

    requeued, cancelled = counted("requeue"), counted("cancelled")
    leaving = Worker(bus, engine, "m")
    await leaving.start()
    handle = await submit(dispatcher, f"r-{leaves.split()[0]}", max_tokens=40)
    collecting = asyncio.ensure_future(collect(handle))
    await eventually(lambda: leaving.busy_slots == 1, what="the request running")
    survivor = Worker(bus, engine, "m")
    await survivor.start()
    if leaves == "connection lost":
        for subscription in leaving._requests:  # the message is redelivered
            await subscription.cancel()
    await leaving.stop()  # (and it never answers)
    chunks = await asyncio.wait_for(collecting, 30)
    await survivor.stop()
    if leaves == "stopped":
        assert counted("requeue") == requeued + 1 and counted("cancelled") == cancelled
    assert chunks[-1].error is None
    assert chunks[-1].attempt == 2
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40


@pytest.mark.asyncio
async def test_a_stream_that_already_sent_text_fails_explicitly(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    dying = Worker(bus, engine, "m")
    await dying.start()
    handle = await submit(dispatcher, "r-stream", max_tokens=60, stream=True)
    chunks = handle.chunks()
    first = await anext(chunks)
    assert first.text
    survivor = Worker(bus, engine, "m")
    await survivor.start()
    for subscription in dying._requests:
        await subscription.cancel()
    with pytest.raises(ReplicaFailed):
        async for _ in chunks:
            pass
    await dying.stop()
    await survivor.stop()


@pytest.mark.asyncio
async def test_cancel_stops_generation_and_frees_the_slot(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m")
    await worker.start()
    handle = await submit(dispatcher, "r-cancel", max_tokens=200, stream=True)
    chunks = handle.chunks()
    await anext(chunks)
    assert worker.busy_slots == 1
    await chunks.aclose()  # the client went away
    await eventually(lambda: worker.busy_slots == 0, timeout_s=1.0, what="its slot freed")
    await worker.stop()


@pytest.mark.asyncio
async def test_a_request_cancelled_while_queued_is_never_run(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m", heartbeat_interval_s=60)
    await worker.start()
    await worker.drain()  # so the request waits in the queue
    skipped = _skipped()
    handle = await submit(dispatcher, "r-queued")
    await handle.close()  # the client went away: the workers hear a cancel
    await asyncio.sleep(0.01)
    await worker.resume()
    # taken from the queue, and dropped unrun
    await eventually(lambda: _skipped() == skipped + 1, what="the request skipped")
    assert worker.busy_slots == 0
    await worker.stop()


def _skipped() -> float:
    value = REGISTRY.get_sample_value("llmos_worker_requests_total",
                                      {"deployment": "m", "outcome": "skipped"})
    return value or 0.0


async def _heartbeats(bus: MemoryBus) -> list[Heartbeat]:
    beats: list[Heartbeat] = []

    async def on_beat(message: TopicMessage) -> None:
        beats.append(decode(Heartbeat, message.body))

    await bus.subscribe(names.HEARTBEAT_TOPIC, on_beat)
    return beats


async def _command(bus: MemoryBus, worker: Worker, action: Literal["drain", "resume"], *,
                   epoch: str | None = None, age_s: float = 0.0) -> None:
    now = time.time() - age_s
    await bus.broadcast(names.COMMAND_TOPIC, encode(Command(
        worker_id=worker.worker_id, epoch=epoch or worker.epoch, action=action,
        issued_at=now, expires_at=now + 1.0)))
    await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_heartbeats_say_who_is_alive_and_how_busy(engine: Engine,
                                                        bus: MemoryBus) -> None:
    beats = await _heartbeats(bus)
    worker = Worker(bus, engine, "m", heartbeat_interval_s=0.1)
    await worker.start()
    await eventually(lambda: len(beats) >= 3, what="3 heartbeats")
    await worker.stop()
    assert {(b.worker_id, b.epoch, b.deployment, b.slots) for b in beats} == {
        (worker.worker_id, worker.epoch, "m", SLOTS)}
    assert all(b.expires_at == b.sent_at + 0.2 for b in beats)


@pytest.mark.asyncio
async def test_drain_finishes_what_runs_and_takes_nothing_new_until_resumed(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    beats = await _heartbeats(bus)
    worker = Worker(bus, engine, "m", heartbeat_interval_s=60)
    await worker.start()
    running = asyncio.ensure_future(collect(await submit(dispatcher, "d-running", max_tokens=24)))
    await eventually(lambda: worker.busy_slots == 1, what="the request running")
    await _command(bus, worker, "drain")
    assert worker.draining and beats[-1].draining
    waiting = asyncio.ensure_future(collect(await submit(dispatcher, "d-waiting")))
    chunks = await asyncio.wait_for(running, 30)  # the one in flight finishes
    assert chunks[-1].error is None
    await asyncio.sleep(0.3)
    assert not waiting.done() and worker.busy_slots == 0  # the new one waits in the queue
    assert beats[-1].draining and beats[-1].busy == 0  # drained: said at once, not a minute on
    await _command(bus, worker, "resume")
    assert not worker.draining
    chunks = await asyncio.wait_for(waiting, 30)
    assert chunks[-1].error is None
    await worker.stop()
    assert beats[-1].leaving  # its goodbye
    assert beats[-1].pid and beats[-1].version and beats[-1].engine["slots"] == worker.slots


@pytest.mark.asyncio
async def test_stale_commands_and_commands_for_an_earlier_start_are_ignored(
        engine: Engine, bus: MemoryBus) -> None:
    worker = Worker(bus, engine, "m", heartbeat_interval_s=60)
    await worker.start()
    await _command(bus, worker, "drain", epoch="an-earlier-start")
    await _command(bus, worker, "drain", age_s=5.0)  # expired 4 s ago
    assert not worker.draining
    await _command(bus, worker, "drain")
    assert worker.draining
    await worker.stop()


@pytest.mark.asyncio
async def test_every_service_tier_has_its_queue_and_is_served(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m", heartbeat_interval_s=60)
    await worker.start()
    handles = [await dispatcher.submit(
        request_id=f"t-{tier}", deployment="m", kind="completion",
        body={"prompt": PROMPT, "max_tokens": 4, "temperature": 0}, stream=False,
        max_tokens_explicit=True, tier=tier) for tier in names.TIERS]
    results = await asyncio.wait_for(asyncio.gather(*(collect(h) for h in handles)), 30)
    await worker.stop()
    assert all(r[-1].error is None and r[-1].usage is not None for r in results)


@pytest.mark.asyncio
async def test_a_burst_of_like_completions_is_one_engine_call_answering_each_as_alone(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m")
    await worker.start()
    try:
        alone = [await collect(await submit_prompt(dispatcher, f"alone-{i}", p))
                 for i, p in enumerate(LIKE_PROMPTS)]
        merged = worker._serving._launcher.merged_calls
        handles = [await submit_prompt(dispatcher, f"burst-{i}", p, stream=True)
                   for i, p in enumerate(LIKE_PROMPTS)]
        together = await asyncio.gather(*(collect(h) for h in handles))
    finally:
        await worker.stop()
    assert worker._serving._launcher.merged_calls == merged + 1
    assert [text(c) for c in together] == [text(c) for c in alone]
    assert [c[-1].usage for c in together] == [c[-1].usage for c in alone]
    assert all(c[-1].finish_reason == "length" for c in together)


@pytest.mark.asyncio
async def test_a_cancelled_member_of_a_merged_call_ends_at_once_and_the_others_finish(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m")
    await worker.start()
    try:
        merged = worker._serving._launcher.merged_calls
        handles = [await submit_prompt(dispatcher, f"m-{i}", p, max_tokens=24, stream=True)
                   for i, p in enumerate(LIKE_PROMPTS[:3])]
        streams = [h.chunks() for h in handles]
        for stream in streams:
            await anext(stream)
        assert worker.busy_slots == 3
        await streams[0].aclose()  # this client went away
        await eventually(lambda: worker.busy_slots == 2, timeout_s=1.0, what="its slot freed")
        rest = await asyncio.gather(*(_rest(s) for s in streams[1:]))
    finally:
        await worker.stop()
    assert worker._serving._launcher.merged_calls == merged + 1
    for chunks in rest:
        assert chunks[-1].error is None
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


async def _rest(stream: AsyncIterator[ReplyChunk]) -> list[ReplyChunk]:
    return [c async for c in stream]


def test_a_request_that_stops_ends_the_merged_call_and_the_others_go_on_alone(
        engine: Engine) -> None:
    """Its slot is not held for a client that has gone; the others continue from the text
    they have sent, and (greedy) end with the text they would have had alone."""
    bodies = [{"prompt": p, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
              for p in LIKE_PROMPTS[:2]]
    alone = [engine_text(engine, body) for body in bodies]
    texts: list[list[str]] = [[], []]
    outcomes: dict[int, GenerationResult | BaseException] = {}

    def on_event(i: int) -> Callable[[EngineEvent], bool]:
        def seen(event: EngineEvent) -> bool:
            if isinstance(event, TextDelta):
                if i == 0 and len(texts[0]) == 2:
                    return True  # the first request's client leaves after two tokens
                texts[i].append(event.text)
            return False
        return seen

    started = time.monotonic()
    with pytest.raises(CannotMerge) as info:
        engine.generate_many("completion", bodies, [on_event(0), on_event(1)],
                             lambda i, outcome: outcomes.__setitem__(i, outcome))
    assert time.monotonic() - started < 5
    assert list(outcomes) == [0]
    assert isinstance(outcomes[0], GenerationResult) and outcomes[0].stopped
    progress = info.value.progress[1]
    assert progress.generated >= 2 and progress.text == "".join(texts[1])
    result = engine.continue_from("completion", bodies[1], progress, on_event(1))
    assert (result.finish_reason, result.completion_tokens) == ("length", 24)
    assert result.prompt_tokens == progress.prompt_tokens
    assert "".join(texts[1]) == alone[1]


def engine_text(engine: Engine, body: dict[str, Any]) -> str:
    parts: list[str] = []
    engine.generate("completion", body, lambda e: isinstance(e, TextDelta)
                    and bool(parts.append(e.text)))
    return "".join(parts)


def test_a_request_stopped_before_the_others_have_text_ends_the_merged_call(
        engine: Engine) -> None:
    """Its slot is not held on; the others, which sent nothing yet, are to run alone."""
    bodies = [{"prompt": p, "max_tokens": 500, "temperature": 0, "ignore_eos": True}
              for p in LIKE_PROMPTS[:3]]
    outcomes: dict[int, GenerationResult | BaseException] = {}

    def on_event(i: int) -> Callable[[EngineEvent], bool]:
        return lambda event: i == 0  # the first request's client is gone at once

    started = time.monotonic()
    with pytest.raises(CannotMerge):
        engine.generate_many("completion", bodies, [on_event(i) for i in range(3)],
                             lambda i, outcome: outcomes.__setitem__(i, outcome))
    assert time.monotonic() - started < 5
    assert list(outcomes) == [0]
    assert isinstance(outcomes[0], GenerationResult) and outcomes[0].stopped


@pytest.mark.asyncio
async def test_a_burst_where_one_prompt_is_too_long_fails_only_that_one(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    worker = Worker(bus, engine, "m")
    await worker.start()
    try:
        handles = [await submit_prompt(dispatcher, "short", LIKE_PROMPTS[0]),
                   await submit_prompt(dispatcher, "long", "word " * 400)]
        short, long = await asyncio.gather(*(collect(h) for h in handles))
    finally:
        await worker.stop()
    assert short[-1].error is None and text(short).strip().startswith("7")
    assert long[-1].error is not None and long[-1].error.status == 400


@pytest.mark.asyncio
async def test_two_projects_deployments_of_one_name_never_share_a_queue(
        engine: Engine, bus: MemoryBus, dispatcher: Dispatcher) -> None:
    assert names.bus_name("m") == "m" and names.bus_name("m", "a") == "_a.m"
    worker = Worker(bus, engine, names.bus_name("m", "a"))  # project a's "m" only
    await worker.start()

    async def ask(rid: str, project: str) -> RequestHandle:
        return await dispatcher.submit(
            request_id=rid, deployment="m", kind="completion", project=project,
            body={"prompt": PROMPT, "max_tokens": 2, "temperature": 0}, stream=False,
            max_tokens_explicit=True)

    try:
        answered = await collect(await ask("in-a", "a"))
        assert answered[-1].final and answered[-1].usage is not None
        for project in ("b", "default"):  # their "m" has no replica: nobody answers
            handle = await ask(f"in-{project}", project)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await collect(handle)
    finally:
        await worker.stop()


@pytest.mark.asyncio
async def test_a_worker_serves_its_own_queue_and_advertises_the_prefixes_it_served(
        engine: Engine, bus: MemoryBus) -> None:
    from llmos.errors import BusError
    from llmos.gateway.affinity import PrefixRouter

    worker = Worker(bus, engine, "m")
    await worker.start()
    router = PrefixRouter(min_chars=0)
    routed = Dispatcher(bus, timeout_s=60, router=router)
    await routed.start()
    try:
        assert worker.route is not None and worker.heartbeat().route == worker.route
        router.observe(worker.heartbeat())
        # (and another replica: with one, the router keeps to the shared queue)
        router.observe(worker.heartbeat().model_copy(update={
            "worker_id": "other", "route": "llmos.direct.m.other", "prefixes": []}))
        prompt = "The quick brown fox jumps over the lazy dog. " * 7  # one 256-char block
        first = await submit_prompt(routed, "first", prompt, max_tokens=2)
        assert first.route is None  # nobody holds it yet: the shared queue
        chunks = await collect(first)
        assert chunks[-1].error is None and chunks[-1].served_by == worker.route
        advertised = worker.heartbeat().prefixes
        assert first.request.prefixes and set(first.request.prefixes) <= set(advertised)
        second = await submit_prompt(routed, "second", prompt + "The end.", max_tokens=2)
        assert second.route == worker.route  # learned from the first answer
        assert text(await collect(second))
    finally:
        await routed.stop()
        route = worker.route
        await worker.stop()
    with pytest.raises(BusError):  # its own queue went with it
        await bus.publish(route, b"x")
