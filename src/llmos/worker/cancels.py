"""Which requests a worker must stop: those in flight (an event each, set to stop the
engine), and cancels that came before their request did (remembered, bounded)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

REMEMBERED = 10_000


class CancelBook:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._inflight: dict[str, threading.Event] = {}
        self._early: OrderedDict[str, float] = OrderedDict()
        self._remembered = remembered

    def __bool__(self) -> bool:
        """Whether any request is in flight."""
        return bool(self._inflight)

    def track(self, request_id: str) -> threading.Event:
        event = threading.Event()
        self._inflight[request_id] = event
        return event

    def release(self, request_id: str) -> None:
        self._inflight.pop(request_id, None)

    def cancelled_before(self, request_id: str) -> bool:
        """Whether a cancel for it came before it did (forgotten once asked)."""
        return self._early.pop(request_id, None) is not None

    def cancel(self, request_id: str) -> None:
        event = self._inflight.get(request_id)
        if event is not None:
            event.set()
            return
        self._early[request_id] = time.time()
        while len(self._early) > self._remembered:
            self._early.popitem(last=False)

    def cancel_all(self) -> None:
        for event in self._inflight.values():
            event.set()
