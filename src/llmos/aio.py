"""Small asyncio helpers every layer uses (no llmos imports)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, Generic, TypeVar

T = TypeVar("T")


async def stop_task(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (a loop, a watcher) and wait until it has ended; its
    CancelledError is the expected end, not an error. None: nothing to stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Inbox(Generic[T]):
    """An unbounded queue with one reader, filled from the loop's thread: what
    ``asyncio.Queue`` does for that case, with less work per item (no getter queue, no
    bound, no task accounting). A stream's reply chunks pass through one each."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> T:
        """The oldest item, once there is one (one reader at a time)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()
