"""Hands what engine threads produce to the event loop: one wake-up for many items.

``loop.call_soon_threadsafe`` per token writes to the loop's self-pipe each time; with
hundreds of streams decoding in step, that is hundreds of wake-ups a step. Here the
first item posted schedules one drain, and every item posted before it runs rides on
it (in the order posted)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[tuple[Callable[[Any], object], Any]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, call: Callable[[Any], object], arg: Any) -> None:
        """Run ``call(arg)`` on the loop soon (from any thread)."""
        with self._lock:
            self._items.append((call, arg))
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for call, arg in items:
            call(arg)
