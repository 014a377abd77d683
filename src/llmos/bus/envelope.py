"""What a backend without native TTLs or acks for a channel carries in headers.

Headers a backend adds for itself start with ``llmos-`` and are removed before a
handler sees a message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from llmos.bus.base import Delivery, DeliveryHandler, Outcome, TopicHandler, TopicMessage

PREFIX = "llmos-"
EXPIRES = "llmos-expires"


def with_expiry(headers: Mapping[str, str] | None, ttl_s: float | None) -> dict[str, str]:
    """A copy of ``headers``, with the expiry of a message that lives ``ttl_s``."""
    sent = dict(headers or {})
    if ttl_s is not None:
        sent[EXPIRES] = repr(time.time() + ttl_s)
    return sent


def is_expired(headers: Mapping[str, str] | None) -> bool:
    expires = (headers or {}).get(EXPIRES)
    return bool(expires) and float(expires or 0) < time.time()


def public(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers a handler sees."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith(PREFIX)}


class UnackedDelivery(Delivery):
    """A message read without acks (a reply stream, at most once): nothing to settle."""

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.body = body
        self.headers = public(headers)
        self.delivery_count = 1
        self.settled = True

    async def _settle(self, outcome: Outcome) -> None:  # (never called: born settled)
        return None


def hand_unacked(deliver: DeliveryHandler | TopicHandler, *, is_topic: bool, body: bytes,
                 headers: Mapping[str, str]) -> Coroutine[Any, Any, None]:
    """The call of a topic's or a reply stream's handler with what it takes."""
    if is_topic:
        return deliver(TopicMessage(body, public(headers)))  # type: ignore[arg-type]
    return deliver(UnackedDelivery(body, headers))  # type: ignore[arg-type]


class Running:
    """Handler calls a backend started, kept referenced until they end (the event loop
    holds tasks only weakly)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
