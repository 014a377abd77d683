"""The prefix hashes a replica advertises: those of the requests it served last.

Its engine's prompt cache (the slots, and the host-side cache behind them) holds the
prompts it computed last, so the newest hashes are the ones worth routing on. A
bounded set, least recently used out first; a heartbeat carries all of it.
"""

from __future__ import annotations

from collections import OrderedDict

CAPACITY = 256
"""Hashes kept: a chat request brings one per message, up to 64."""


class RecentPrefixes:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._hashes: OrderedDict[str, None] = OrderedDict()

    def add(self, hashes: list[str]) -> None:
        for digest in hashes:
            self._hashes[digest] = None
            self._hashes.move_to_end(digest)
        while len(self._hashes) > self.capacity:
            self._hashes.popitem(last=False)

    def newest(self) -> list[str]:
        """Oldest first, newest last."""
        return list(self._hashes)
