"""A request its replicas keep failing on is given up, and its client is told so."""

from __future__ import annotations

import pytest

from llmos.bus import Delivery, names
from llmos.bus.memory import MemoryBus
from llmos.gateway.dispatch import Dispatcher


@pytest.mark.asyncio
async def test_poison_request_ends_with_a_clear_error(bus: MemoryBus) -> None:
    dispatcher = Dispatcher(bus, timeout_s=30)
    await dispatcher.start()
    deliveries: list[int] = []

    async def crashing_replica(delivery: Delivery) -> None:
        # what a replica that dies on this request looks like from the queue
        deliveries.append(delivery.delivery_count)
        await delivery.nack(requeue=True)

    handle = await dispatcher.submit(
        request_id="poison", deployment="m", kind="completion", body={"prompt": "x"},
        stream=False, max_tokens_explicit=True)
    await bus.consume(names.infer_queue("m"), crashing_replica, prefetch=1)
    chunks = [chunk async for chunk in handle.chunks()]
    await dispatcher.stop()
    assert deliveries == list(range(1, names.INFER_DELIVERY_LIMIT + 1))
    final = chunks[-1]
    assert final.final and final.error is not None
    assert final.error.code == "request_dead_lettered"
    assert str(names.INFER_DELIVERY_LIMIT) in final.error.message
