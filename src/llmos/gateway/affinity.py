"""Prefix-aware routing: which replica's own queue a request goes to, if any.

A replica whose prompt cache holds a request's prefix answers it without computing
that prefix again. Replicas advertise the prefix hashes of the requests they served
last in their heartbeats; a gateway also learns the replica of each answer it reads
(the final chunk names it), so the next turn of a chat it just answered finds it at
once. A request goes to the replica holding its longest known prefix while that
replica has a free slot, by the replica's last heartbeat plus what this gateway sent
it since; among several such replicas, to the least loaded (ties at random). Otherwise,
and for prefixes shorter than ``min_chars``, it takes the shared queue as before.

Pure bookkeeping: heartbeats and routing decisions in, a route (a queue) out, the time
passed in, tested without a bus.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from llmos.bus.messages import Heartbeat
from llmos.gateway.prefixes import Prefixes


@dataclass
class _Replica:
    worker_id: str
    deployment: str
    slots: int
    busy: int
    sent_at: float
    expires_at: float
    draining: bool


class PrefixRouter:
    def __init__(self, *, min_chars: int = 1024, max_prefixes: int = 100_000,
                 rng: random.Random | None = None) -> None:
        self.min_chars = min_chars
        self.max_prefixes = max_prefixes
        self._rng = rng or random.Random()
        self._replicas: dict[str, _Replica] = {}
        """By route (a replica's own queue)."""
        self._routes: dict[str, str] = {}
        """Each worker's current route: a new one (a restart, a reconnect) retires the old."""
        self._owners: OrderedDict[str, dict[str, float]] = OrderedDict()
        """Prefix hash -> the routes that served it, with when; least recently used first."""
        self._sent: dict[str, dict[str, float]] = {}
        """Route -> the requests this gateway sent there that are not answered, with when."""

    def observe(self, heartbeat: Heartbeat) -> None:
        route = heartbeat.route
        if route is None:
            return
        old = self._routes.get(heartbeat.worker_id)
        if old is not None and old != route:
            self._replicas.pop(old, None)
        if heartbeat.leaving:
            self._replicas.pop(route, None)
            self._routes.pop(heartbeat.worker_id, None)
            return
        known = self._replicas.get(route)
        if known is not None and known.sent_at > heartbeat.sent_at:
            return  # an older beat, overtaken
        self._routes[heartbeat.worker_id] = route
        self._replicas[route] = _Replica(
            worker_id=heartbeat.worker_id, deployment=heartbeat.deployment,
            slots=heartbeat.slots, busy=heartbeat.busy, sent_at=heartbeat.sent_at,
            expires_at=heartbeat.expires_at, draining=heartbeat.draining)
        self._own(heartbeat.prefixes, route, heartbeat.sent_at)

    def learn(self, hashes: list[str], route: str, now: float) -> None:
        """``route`` answered a request of these prefixes: its cache holds them now."""
        self._own(hashes, route, now)

    def _own(self, hashes: list[str], route: str, when: float) -> None:
        owners = self._owners
        for digest in hashes:
            routes = owners.get(digest)
            if routes is None:
                owners[digest] = {route: when}
            else:
                routes[route] = max(when, routes.get(route, when))
                owners.move_to_end(digest)
        while len(owners) > self.max_prefixes:
            owners.popitem(last=False)

    def live(self, route: str, now: float) -> bool:
        replica = self._replicas.get(route)
        return replica is not None and replica.expires_at >= now

    def load(self, route: str) -> int:
        """Requests on the replica: those of its last heartbeat, and those sent there
        since by this gateway that are not answered (a lower bound: other gateways and
        the shared queue add theirs between heartbeats)."""
        replica = self._replicas.get(route)
        sent = self._sent.get(route, {})
        if replica is None:
            return len(sent)
        since = sum(1 for at in sent.values() if at > replica.sent_at)
        return max(replica.busy + since, len(sent))

    def choose(self, deployment: str, prefixes: Prefixes, now: float) -> str | None:
        """The route for a request of ``deployment`` (its bus name), or None: the shared
        queue."""
        for digest, chars in zip(reversed(prefixes.hashes), reversed(prefixes.chars),
                                 strict=True):
            if chars < self.min_chars:
                return None
            owners = self._owners.get(digest)
            if not owners:
                continue
            held = [route for route in owners if self._serves(route, deployment, now)]
            if not held:
                continue
            loads = {route: self.load(route) for route in held}
            free = [route for route in held if loads[route] < self._replicas[route].slots]
            if not free:
                return None  # every holder is full: the shared queue spreads it
            least = min(loads[route] for route in free)
            return self._rng.choice(sorted(r for r in free if loads[r] == least))
        return None

    def _serves(self, route: str, deployment: str, now: float) -> bool:
        replica = self._replicas.get(route)
        return (replica is not None and replica.deployment == deployment
                and not replica.draining and replica.expires_at >= now)

    def sent(self, route: str, request_id: str, now: float) -> None:
        self._sent.setdefault(route, {})[request_id] = now

    def done(self, route: str, request_id: str) -> None:
        sent = self._sent.get(route)
        if sent is not None:
            sent.pop(request_id, None)
            if not sent:
                del self._sent[route]
