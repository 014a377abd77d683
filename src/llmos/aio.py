"""Small asyncio helpers every layer uses (no llmos imports)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (a loop, a watcher) and wait until it has ended; its
    CancelledError is the expected end, not an error. None: nothing to stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
