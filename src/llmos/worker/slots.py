"""A worker's engine slots, handed out best service tier first.

A worker takes requests from one queue per tier, up to its slot count from each,
so a backlog of ``default`` requests cannot keep a ``priority`` request from
reaching it. Which one runs next when a slot frees is decided here: the longest
waiting request of the best tier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence


class TieredSlots:
    def __init__(self, slots: int, tiers: Sequence[str]) -> None:
        self.capacity = slots
        self.in_use = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {t: deque() for t in tiers}

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, tier: str) -> AsyncIterator[bool]:
        """A slot, held inside the block; the block is given whether it had to wait."""
        waited = await self._acquire(tier)
        try:
            yield waited
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
