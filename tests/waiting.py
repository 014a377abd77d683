"""Waiting in tests: poll for what a test waits for, never sleep a fixed time for it.

A fixed sleep is too short on a slow moment (a flaky test) and too long on every other
one (a slow suite). These poll a condition until it holds, and fail with what was
awaited once ``timeout_s`` passes. (A sleep still has its place where a test checks
that something does *not* happen within a window.)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(condition: Callable[[], T | Awaitable[T]], timeout_s: float = 5.0,
                     interval_s: float = 0.01, what: str = "condition") -> T:
    """Poll ``condition()`` (a plain or an async function) until it returns something
    truthy, which is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:g} s (last: {result!r})")
        await asyncio.sleep(interval_s)


def wait_until(condition: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.1,
               what: str = "condition") -> T:
    """``eventually`` for a test without an event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:g} s (last: {result!r})")
        time.sleep(interval_s)
