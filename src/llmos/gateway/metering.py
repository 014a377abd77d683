"""Rate limits, quotas and usage at the gateway.

``UsageBook`` counts each inference request against its key's and its project's
scopes (``key:ID``, ``project:NAME``): a request and its expected tokens when it is
admitted, the difference to the tokens it really took when its response ends. The
request path only reads and writes memory; every half second the book hands its new
counts to the store and reads back what every gateway has counted (``store/usage.py``),
so limits hold across gateways to within about half a second of traffic. While no key
or project has a limit, nothing needs the shared counts that soon: they are only the
usage records then, handed over every 5 s (and when the gateway stops).

``Metering`` is the ASGI middleware that settles a request's count when its response
has ended, however it ended (finished, failed, or the client gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from llmos.auth.limits import DAY, MINUTE, Headroom, Limits, Spent, decide, headroom
from llmos.auth.limits import window_start as start
from llmos.errors import ConfigError, RateLimited
from llmos.store import Store
from llmos.store.usage import Window

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 0.5
UNLIMITED_SYNC_INTERVAL_S = 5.0
"""How often the counts go to the store while no limit needs them (records only)."""
FRESH_S = 10.0
"""A gateway's report of its requests in flight counts for this long."""


@dataclass
class Ticket:
    scopes: tuple[str, ...]
    reserved: int
    minute: int
    day: int


class Counters(Protocol):
    """Where the gateways meet to share their counts: the store (``store.usage``), or
    Redis (``gateway/redis_counters.py``)."""

    keeps_records: bool
    """Whether its counts are the usage records too (else the days go to the store)."""

    def exchange(self, gateway: str, added: dict[Window, tuple[int, int]],
                 in_flight: dict[str, int], *, minute: int, day: int, now: float,
                 fresh_s: float) -> tuple[dict[Window, tuple[int, int]],
                                          dict[str, int]]: ...

    def prune(self, before_minute: int, gone_before: float) -> None: ...

    def close(self) -> None: ...


def open_counters(url: str | None, store: Store) -> Counters:
    """The counters at ``url`` (``redis://``, ``rediss://``), or the store's."""
    if url is None:
        return store.usage
    if url.split("://", 1)[0] in ("redis", "rediss"):
        from llmos.gateway.redis_counters import RedisCounters

        return RedisCounters(url)
    raise ConfigError(f"counters_url must be redis:// or rediss://, not {url.split(':')[0]}")


class UsageBook:
    def __init__(self, store: Store, counters: Counters | None = None) -> None:
        self.store = store
        self.counters: Counters = counters or store.usage
        self._unrecorded: dict[Window, tuple[int, int]] = {}
        """Daily counts the store has not taken yet (where the counters are not it)."""
        self.gateway = uuid.uuid4().hex[:12]
        self._added: dict[Window, tuple[int, int]] = {}
        self._sending: dict[Window, tuple[int, int]] = {}
        """Counts handed to the store and not yet read back from it."""
        self._shared: dict[Window, tuple[int, int]] = {}
        self._in_flight: dict[str, int] = {}
        self._others: dict[str, int] = {}
        self._last_prune = 0.0
        self._sharing = asyncio.Lock()
        """One exchange at a time (``sync`` hands over what is new since the last)."""
        self._limits_changed = asyncio.Event()

    def _count(self, window: Window) -> tuple[int, int]:
        shared, added = self._shared.get(window, (0, 0)), self._added.get(window, (0, 0))
        sending = self._sending.get(window, (0, 0))
        return (shared[0] + added[0] + sending[0], shared[1] + added[1] + sending[1])

    def _add(self, window: Window, requests: int, tokens: int) -> None:
        old = self._added.get(window, (0, 0))
        self._added[window] = (old[0] + requests, old[1] + tokens)

    def spent(self, scope: str, now: float) -> Spent:
        minute, day = start(now, MINUTE), start(now, DAY)
        return Spent(previous_minute=self._count((scope, "m", minute - MINUTE)),
                     this_minute=self._count((scope, "m", minute)),
                     today_tokens=self._count((scope, "d", day))[1],
                     in_flight=self._in_flight.get(scope, 0) + self._others.get(scope, 0))

    def admit(self, scopes: list[tuple[str, Limits, str]], cost: int, now: float
              ) -> tuple[Ticket, Headroom | None]:
        """Counts one request of ``cost`` tokens against each (scope, limits, name), or
        raises ``RateLimited`` (a 429) for the first limit it would break. Returns the
        ticket that ``finish`` settles, and the headroom of the tightest limited scope."""
        shown: Headroom | None = None
        for scope, limits, what in scopes:
            if not limits.any():
                continue
            spent = self.spent(scope, now)
            refusal = decide(limits, spent, cost, now, what)
            room = headroom(limits, spent, now)
            if refusal is not None:
                raise RateLimited(refusal.message, kind=refusal.kind,
                                  retry_after_s=refusal.retry_after_s,
                                  headers=rate_headers(room))
            if shown is None or (room.remaining_requests or 0) < (shown.remaining_requests
                                                                  or 0):
                shown = room
        minute, day = start(now, MINUTE), start(now, DAY)
        for scope, _, _ in scopes:
            self._add((scope, "m", minute), 1, cost)
            self._add((scope, "d", day), 1, 0)
            self._in_flight[scope] = self._in_flight.get(scope, 0) + 1
        return Ticket(tuple(s for s, _, _ in scopes), cost, minute, day), shown

    def finish(self, ticket: Ticket, tokens: int) -> None:
        """The request took ``tokens`` (prompt and completion; 0 if it failed first)."""
        for scope in ticket.scopes:
            self._add((scope, "m", ticket.minute), 0, tokens - ticket.reserved)
            self._add((scope, "d", ticket.day), 0, tokens)
            left = self._in_flight.get(scope, 0) - 1
            if left > 0:
                self._in_flight[scope] = left
            else:
                self._in_flight[scope] = 0

    def sync(self) -> None:
        """Hand the new counts to the store; read back every gateway's (blocking)."""
        added, self._added = self._added, {}
        self._sending = added
        now = time.time()
        minute, day = start(now, MINUTE), start(now, DAY)
        try:
            shared, others = self.counters.exchange(
                self.gateway, added, dict(self._in_flight), minute=minute, day=day,
                now=now, fresh_s=FRESH_S)
        except Exception:
            self._sending = {}
            for window, (requests, tokens) in added.items():  # (kept for the next try)
                self._add(window, requests, tokens)
            raise
        self._shared, self._others, self._sending = shared, others, {}
        self._in_flight = {s: n for s, n in self._in_flight.items() if n}
        if not self.counters.keeps_records:
            self._record([(w, n) for w, n in added.items() if w[1] == "d"])
        if now - self._last_prune > 60:
            self.counters.prune(minute - 2 * MINUTE, now - 10 * FRESH_S)
            self._last_prune = now

    def _record(self, days: list[tuple[Window, tuple[int, int]]]) -> None:
        """Daily counts into the store's usage records (kept for the next try if away)."""
        for window, (requests, tokens) in days:
            old = self._unrecorded.get(window, (0, 0))
            self._unrecorded[window] = (old[0] + requests, old[1] + tokens)
        if self._unrecorded:
            try:
                self.store.usage.record(self._unrecorded)
            except Exception as exc:
                log.warning("could not record usage in the store: %s", exc)
                return
            self._unrecorded = {}

    def limits_changed(self) -> None:
        """Some limit may have been set or lifted (``follow`` looks again now)."""
        self._limits_changed.set()

    async def follow(self, limited: Callable[[], bool], interval_s: float = SYNC_INTERVAL_S,
                     unlimited_interval_s: float | None = None) -> None:
        """Share the counts every ``interval_s`` while ``limited()`` (some limit is set
        and needs every gateway's counts), else every ``unlimited_interval_s``, sleeping
        in between (``limits_changed`` wakes it). (Each exchange is a store transaction: a
        few milliseconds of CPU that, on a machine whose cores the engine keeps busy,
        come out of its decoding.)"""
        seldom = UNLIMITED_SYNC_INTERVAL_S if unlimited_interval_s is None \
            else unlimited_interval_s
        last = time.monotonic()
        while True:
            wait_s = interval_s if limited() else seldom - (time.monotonic() - last)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._limits_changed.wait(), max(wait_s, 0.0))
            self._limits_changed.clear()
            if not limited() and time.monotonic() - last < seldom:
                continue
            last = time.monotonic()
            await self.share()

    async def share(self) -> None:
        """One exchange with the store now (a failure is logged: the counts wait for the
        next)."""
        async with self._sharing:
            try:
                await asyncio.to_thread(self.sync)
            except Exception as exc:
                log.warning("could not share usage counts: %s", exc)


def rate_headers(room: Headroom) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, for the limits that are set."""
    headers: dict[str, str] = {}
    reset = f"{max(room.reset_s, 0.0):.3f}s"
    if room.limit_requests is not None:
        headers |= {"x-ratelimit-limit-requests": str(room.limit_requests),
                    "x-ratelimit-remaining-requests": str(room.remaining_requests),
                    "x-ratelimit-reset-requests": reset}
    if room.limit_tokens is not None:
        headers |= {"x-ratelimit-limit-tokens": str(room.limit_tokens),
                    "x-ratelimit-remaining-tokens": str(room.remaining_tokens),
                    "x-ratelimit-reset-tokens": reset}
    return headers


class Metering:
    """Settles each admitted request's ticket when its response has ended, and adds the
    ``x-ratelimit-*`` headers admission left in the scope."""

    def __init__(self, app: ASGIApp, *, book: UsageBook) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def with_headers(message: dict[str, object]) -> None:
            extra = state.get("rate_headers")
            if message["type"] == "http.response.start" and extra:
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers += [(k.encode(), v.encode()) for k, v in extra.items()]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, with_headers)  # type: ignore[arg-type]
        finally:
            ticket: Ticket | None = state.pop("ticket", None)
            if ticket is not None:
                fields = state.get("log", {})
                used = (fields.get("prompt_tokens") or 0) + (fields.get("completion_tokens")
                                                             or 0)
                self.book.finish(ticket, int(used))
