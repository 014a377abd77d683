"""The outbox: one bus message per gateway per pass, the final one at once, and what
waits sent when the worker stops."""

from __future__ import annotations

import pytest

from llmos.bus import Delivery
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import ReplyBatch, ReplyChunk, decode
from llmos.worker.outbox import Outbox
from tests.waiting import eventually


def chunk(request: str, seq: int, *, final: bool = False) -> ReplyChunk:
    return ReplyChunk(request_id=request, attempt=1, seq=seq, text=f"{request}{seq}",
                      final=final)


@pytest.mark.asyncio
async def test_chunks_of_one_pass_go_to_each_gateway_as_one_message() -> None:
    bus = MemoryBus()
    await bus.connect()
    batches: dict[str, list[list[str]]] = {"a": [], "b": []}
    for gateway in batches:
        await bus.declare_queue(gateway)

        async def on_batch(d: Delivery, gateway: str = gateway) -> None:
            batches[gateway].append(
                [c.text for c in decode(ReplyBatch, d.body).chunks])

        await bus.consume(gateway, on_batch, prefetch=1, auto_ack=True)
    outbox = Outbox(bus)
    for seq in range(3):
        outbox.add("a", chunk("r", seq))
        outbox.add("a", chunk("s", seq))
        outbox.add("b", chunk("t", seq))
    await outbox.final("a", chunk("r", 3, final=True))  # with what waits for "a"
    await eventually(lambda: batches["b"])
    assert batches["a"] == [["r0", "s0", "r1", "s1", "r2", "s2", "r3"]]
    assert batches["b"] == [["t0", "t1", "t2"]]
    outbox.add("b", chunk("t", 3))
    await outbox.close()  # sends what waits, and returns
    await eventually(lambda: len(batches["b"]) == 2)
    assert batches["b"][1] == ["t3"]
    await bus.close()
