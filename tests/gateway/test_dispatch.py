"""The dispatcher: a request read to its end sends no cancel; an abandoned one does."""

from __future__ import annotations

import asyncio

import pytest

from llmos.bus import Delivery, TopicMessage, names
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Cancel, InferenceRequest, ReplyBatch, ReplyChunk, decode, encode
from llmos.gateway.dispatch import Dispatcher, RequestHandle
from tests.waiting import eventually


async def _answering_bus(cancels: list[str]) -> MemoryBus:
    """A bus with a stand-in replica that answers every request with two chunks."""
    bus = MemoryBus()
    await bus.connect()
    queue = names.infer_queue("m")
    await bus.declare_queue(queue, names.infer_queue_options("m"))

    async def replica(delivery: Delivery) -> None:
        request = decode(InferenceRequest, delivery.body)
        for seq, final in ((0, False), (1, True)):
            await bus.publish(request.reply_to, encode(ReplyBatch(chunks=[ReplyChunk(
                request_id=request.request_id, attempt=1, seq=seq, text="x", final=final)])),
                durable=False)
        await delivery.ack()

    async def on_cancel(message: TopicMessage) -> None:
        cancels.append(decode(Cancel, message.body).request_id)

    await bus.consume(queue, replica, prefetch=4)
    await bus.subscribe(names.CANCEL_TOPIC, on_cancel)
    return bus


async def _submit(dispatcher: Dispatcher, request_id: str) -> RequestHandle:
    return await dispatcher.submit(request_id=request_id, deployment="m", kind="completion",
                                   body={"prompt": "p"}, stream=True, max_tokens_explicit=False)


@pytest.mark.asyncio
async def test_a_request_read_to_the_final_chunk_sends_no_cancel() -> None:
    cancels: list[str] = []
    bus = await _answering_bus(cancels)
    dispatcher = Dispatcher(bus, timeout_s=10)
    await dispatcher.start()
    handle = await _submit(dispatcher, "done")
    chunks = handle.chunks()
    # Read as the SSE route does: stop at the final chunk, then close the generator.
    async for chunk in chunks:
        if chunk.final:
            break
    await chunks.aclose()

    handle = await _submit(dispatcher, "abandoned")
    chunks = handle.chunks()
    await anext(chunks)
    await chunks.aclose()
    await eventually(lambda: cancels == ["abandoned"], what="the cancel sent")
    await dispatcher.stop()
    await bus.close()


@pytest.mark.asyncio
async def test_chunks_that_arrive_out_of_order_are_read_in_order() -> None:
    """On RabbitMQ the final chunk (confirmed) goes on another channel than the others
    and may overtake them: the handle reads chunks by their sequence number."""
    bus = MemoryBus()
    await bus.connect()
    dispatcher = Dispatcher(bus, timeout_s=10)
    await dispatcher.start()
    await bus.declare_queue(names.infer_queue("m"), names.infer_queue_options("m"))
    handle = await _submit(dispatcher, "shuffled")
    for seq in (2, 0, 1):
        handle.deliver(ReplyChunk(request_id="shuffled", attempt=1, seq=seq, text=str(seq),
                                  final=seq == 2))
    assert [c.text async for c in handle.chunks()] == ["0", "1", "2"]
    await dispatcher.stop()
    await bus.close()


@pytest.mark.asyncio
async def test_busy_returns_only_while_a_request_is_in_flight() -> None:
    """What the stranded-request pass sleeps on while the gateway has nothing in flight."""
    bus = await _answering_bus([])
    dispatcher = Dispatcher(bus, timeout_s=10)
    await dispatcher.start()
    waiting = asyncio.create_task(dispatcher.busy())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    handle = await _submit(dispatcher, "r")
    await asyncio.wait_for(waiting, 1.0)
    await asyncio.wait_for(dispatcher.busy(), 1.0)  # (still in flight: at once)
    async for chunk in handle.chunks():
        if chunk.final:
            break
    assert dispatcher.forget("r")
    waiting = asyncio.create_task(dispatcher.busy())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    waiting.cancel()
    await dispatcher.stop()
    await bus.close()
