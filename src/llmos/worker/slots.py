"""A worker's engine slots, handed out best service tier first.

A worker takes requests from one queue per tier, up to its slot count from each,
so a backlog of ``default`` requests cannot keep a ``priority`` request from
reaching it. Which one runs next when a slot frees is decided here: the longest
waiting request of the best tier.

Besides its running places, the engine may be given ``standby`` more requests, which it
keeps in its own queue and starts within the same step as a running one ends (llama.cpp
defers a task that finds no free slot and starts it when one is released). Handing the
next request over only after the engine's call returned leaves the freed slot idle for
the rest of the step the engine is in while the event loop finishes one request and
starts the next: 20-40 ms a hand-off on these 2 cores (measured: the next request's
first token 81-103 ms after the end, against 108-128 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence

STANDBY = 1
"""Requests a worker hands its engine beyond its slots, to start as soon as one frees.

One: enough to take the waiting time out of a hand-off (two slots rarely free in the
same step when requests differ in length), while it commits only one request early to
this replica, which another replica with a free slot can no longer take."""


class TieredSlots:
    def __init__(self, slots: int, tiers: Sequence[str], standby: int = 0) -> None:
        self.running_places = slots
        self.capacity = slots + standby
        self.in_use = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {t: deque() for t in tiers}

    @property
    def running(self) -> int:
        """Requests the engine runs now (the rest of ``in_use`` are on standby)."""
        return min(self.in_use, self.running_places)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, tier: str) -> AsyncIterator[bool]:
        """A place, held inside the block; the block is given whether its request queues:
        it had to wait for the place, or the place is on standby (all slots run)."""
        waited = await self._acquire(tier)
        try:
            yield waited or self.in_use > self.running_places
        finally:
            self._release()

    async def _acquire(self, tier: str) -> bool:
        if self.in_use < self.capacity and not self.waiting:
            self.in_use += 1
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[tier].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            else:
                self._waiting[tier].remove(future)
            raise
        return True

    def _release(self) -> None:
        for queue in self._waiting.values():  # tiers in order, best first
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # the slot passes on; in_use stays
                    return
        self.in_use -= 1
