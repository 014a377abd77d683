"""uvicorn's Server, as LLMOS runs it (imported only when a server starts).

- It does not raise again the signal that stopped it once it has shut down (uvicorn
  does, which kills the process before it stops its replicas, releases its lease and
  closes the bus).
- Its main loop wakes once a second, not ten times, and at once when told to exit.
  uvicorn's tick only refreshes the ``Date`` header (once a second) and looks whether
  to exit; an idle server woke ten times a second for it, and on a machine whose cores
  the engine keeps busy every wake-up takes a core from a compute thread for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

TICK_S = 1.0
"""How often the main loop looks (uvicorn's ``on_tick`` refreshes the Date header on
every tenth count: each of these ticks counts ten)."""


class Server(uvicorn.Server):
    _exit_asked: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        # (set from a signal handler too: call_soon_threadsafe wakes the loop's selector)
        self._should_exit = value
        loop, asked = self._loop, self._exit_asked
        if value and loop is not None and asked is not None and not loop.is_closed():
            loop.call_soon_threadsafe(asked.set)

    async def main_loop(self) -> None:
        self._loop, self._exit_asked = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_asked.wait(), TICK_S)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        inner = super().capture_signals()
        inner.__enter__()
        try:
            yield
        finally:
            self._captured_signals.clear()
            inner.__exit__(None, None, None)
