"""Engine slots go to the best service tier first (pure asyncio, no engine)."""

from __future__ import annotations

import asyncio

import pytest

from llmos.bus.names import TIERS
from llmos.worker.slots import TieredSlots


@pytest.mark.asyncio
async def test_a_freed_slot_goes_to_the_best_waiting_tier_then_the_oldest() -> None:
    slots = TieredSlots(2, TIERS)
    started: list[str] = []
    release = {name: asyncio.Event() for name in ("r1", "r2", "d1", "f1", "p1", "d2", "p2")}

    async def run(name: str, tier: str) -> None:
        async with slots.slot(tier):
            started.append(name)
            await release[name].wait()

    tasks = [asyncio.create_task(run("r1", "default")), asyncio.create_task(run("r2", "flex"))]
    await asyncio.sleep(0)
    for name, tier in (("d1", "default"), ("f1", "flex"), ("p1", "priority"),
                       ("d2", "default"), ("p2", "priority")):
        tasks.append(asyncio.create_task(run(name, tier)))
        await asyncio.sleep(0)
    assert started == ["r1", "r2"] and slots.in_use == 2 and slots.waiting == 5
    for name in ("r1", "r2", "p1", "p2", "d1", "d2", "f1"):
        release[name].set()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert started == ["r1", "r2", "p1", "p2", "d1", "d2", "f1"]
    assert slots.in_use == 0 and slots.waiting == 0


@pytest.mark.asyncio
async def test_a_waiter_cancelled_before_or_after_its_turn_leaks_no_slot() -> None:
    slots = TieredSlots(1, TIERS)
    holder = asyncio.Event()

    async def hold() -> None:
        async with slots.slot("default"):
            await holder.wait()

    async def wait_for_slot() -> None:
        async with slots.slot("default"):
            pass

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0)
    waiter.cancel()  # while it waits
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.waiting == 0
    late = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0)
    holder.set()
    late.cancel()  # the slot may be handed over in the same moment
    await asyncio.gather(first, late, return_exceptions=True)
    assert slots.in_use == 0 and slots.waiting == 0


@pytest.mark.asyncio
async def test_a_standby_place_is_taken_without_waiting_and_counts_as_queued() -> None:
    slots = TieredSlots(1, TIERS, standby=1)
    release = asyncio.Event()
    queues: list[bool] = []

    async def run() -> None:
        async with slots.slot("default") as queued:
            queues.append(queued)
            await release.wait()

    tasks = [asyncio.create_task(run()) for _ in range(3)]
    await asyncio.sleep(0)
    # The first runs, the second is on standby (handed to the engine), the third waits here.
    assert queues == [False, True] and slots.in_use == 2 and slots.waiting == 1
    assert slots.running == 1
    release.set()
    await asyncio.gather(*tasks)
    assert queues == [False, True, True] and slots.in_use == 0 and slots.running == 0
