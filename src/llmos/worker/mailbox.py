"""Hands what engine threads produce to the event loop: one wake-up for many items.

``loop.call_soon_threadsafe`` per token writes to the loop's self-pipe each time; with
hundreds of streams decoding in step, that is hundreds of wake-ups a step. Here the
first item posted schedules one drain, and every item posted before it runs rides on
it (in the order posted). What a posted call wants done once per drain (a stream's
tokens joined into one chunk, however many came) it hands to ``after_items``."""

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
        self._after: list[Callable[[], object]] = []

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
        after, self._after = self._after, []
        for done in after:
            done()

    def after_items(self, call: Callable[[], object]) -> None:
        """From a posted call: run ``call()`` once this drain has run every item."""
        self._after.append(call)
