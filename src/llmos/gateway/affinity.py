"""Prefix-aware routing: which replica's own queue a request goes to, if any.

A replica whose prompt cache holds a request's prefix answers it without computing
that prefix again. Replicas advertise the prefix hashes of the requests they served
last in their heartbeats; a gateway also learns the replica of each answer it reads
(the final chunk names it), so the next turn of a chat it just answered finds it at
once. A request goes to the replica holding its longest known prefix while that
replica has a free slot, by the replica's last heartbeat and what this gateway knows
it holds there now; among several such replicas, to the least loaded (ties at random).
When none of them has a free slot, it takes the shared queue if another replica has
one (a hot prefix spreads); if every replica is full, it waits at the least loaded
holder (up to as many waiting as it has slots) rather than in the shared queue, from
which it would be computed again. Prefixes shorter than ``min_chars`` take the shared
queue as before, and so does every request of a deployment with one live replica: the
shared queue reaches the same cache, and in arrival order (a request in the replica's
own queue would pass those waiting in the shared one).

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
        self._on: dict[str, dict[str, float]] = {}
        """Route -> this gateway's requests on that replica (sent to its queue, or seen
        starting there from the shared queue) that are not answered, with since when."""
        self._ended: dict[str, list[tuple[float, float]]] = {}
        """Route -> (since, until) of this gateway's requests there that ended lately:
        with those on it, what its last heartbeat's ``busy`` counted of ours."""

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

    def drop(self, route: str) -> None:
        """The route is gone (a send to it found no queue): its replica is, too."""
        replica = self._replicas.pop(route, None)
        if replica is not None and self._routes.get(replica.worker_id) == route:
            del self._routes[replica.worker_id]

    def live(self, route: str, now: float) -> bool:
        replica = self._replicas.get(route)
        return replica is not None and replica.expires_at >= now

    def load(self, route: str) -> int:
        """Requests on the replica: this gateway's own there now, exactly, and the others
        its last heartbeat counted (its ``busy`` less ours then: other gateways' and
        processes' requests; they change between heartbeats unseen)."""
        replica = self._replicas.get(route)
        on = self._on.get(route, {})
        if replica is None:
            return len(on)
        at = replica.sent_at
        ours_then = (sum(1 for since in on.values() if since <= at)
                     + sum(1 for since, until in self._ended.get(route, ())
                           if since <= at < until))
        return len(on) + max(0, replica.busy - ours_then)

    def choose(self, deployment: str, prefixes: Prefixes, now: float) -> str | None:
        """The route for a request of ``deployment`` (its bus name), or None: the shared
        queue."""
        if not self._several(deployment, now):
            # One replica: the shared queue reaches the same cache, in arrival order. Its
            # own queue would only let these requests pass the others waiting there.
            return None
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
                if self._room_elsewhere(deployment, held, now):
                    return None  # the shared queue spreads it to a replica with room
                # Every replica is full: waiting at a holder beats waiting as long in
                # the shared queue and then computing the prefix again. Up to one
                # slot's worth of waiting requests each.
                free = [route for route in held
                        if loads[route] < 2 * self._replicas[route].slots]
                if not free:
                    return None
            least = min(loads[route] for route in free)
            return self._rng.choice(sorted(r for r in free if loads[r] == least))
        return None

    def _several(self, deployment: str, now: float) -> bool:
        """Whether two or more replicas serve ``deployment``: a choice to make."""
        serving = 0
        for route in self._replicas:
            if self._serves(route, deployment, now):
                serving += 1
                if serving > 1:
                    return True
        return False

    def _room_elsewhere(self, deployment: str, held: list[str], now: float) -> bool:
        """Whether a replica of ``deployment`` that does not hold the prefix has a free
        slot (by its heartbeat and what this gateway knows it sent it since)."""
        return any(self.load(route) < replica.slots
                   for route, replica in self._replicas.items()
                   if route not in held and self._serves(route, deployment, now))

    def _serves(self, route: str, deployment: str, now: float) -> bool:
        replica = self._replicas.get(route)
        return (replica is not None and replica.deployment == deployment
                and not replica.draining and replica.expires_at >= now)

    def sent(self, route: str, request_id: str, now: float) -> None:
        """This gateway sent a request to the replica's queue (or saw one of its requests
        start there): it holds a slot there, or waits for one, until ``done``."""
        self._on.setdefault(route, {}).setdefault(request_id, now)

    def done(self, route: str, request_id: str, now: float) -> None:
        on = self._on.get(route)
        since = on.pop(request_id, None) if on is not None else None
        if since is None:
            return
        if not on:
            del self._on[route]
        ended = self._ended.setdefault(route, [])
        ended.append((since, now))
        replica = self._replicas.get(route)
        horizon = replica.sent_at if replica is not None else now
        if len(ended) > 64 or ended[0][1] < horizon:  # only what ended after the last beat
            self._ended[route] = [e for e in ended if e[1] >= horizon][-64:]
