"""Rate-limit counts shared through Redis (``counters_url = redis://…``), not the store.

The same exchange as ``store/usage.py``: every half second (every 5 s while no limit is
set) each gateway adds its new counts and reads back every gateway's, off the request
path. In Redis:

- ``<prefix>use:<kind>:<start>:<scope>``: a window's counts (hash: ``r`` requests,
  ``t`` tokens), added with HINCRBY, expiring after their window has passed;
- ``<prefix>scopes:<kind>:<start>``: the scopes counted in a window (a set);
- ``<prefix>flight:<gateway>``: a gateway's requests in flight by scope (a hash),
  expiring unless the gateway reports again within ``fresh_s``;
- ``<prefix>gateways``: the gateways by the time of their last report (a sorted set).

The daily counts still go to the store too, which keeps the usage records
(``/api/usage``); Redis only carries what limits read.
"""

from __future__ import annotations

import math
from typing import Any

from llmos.auth.limits import DAY, MINUTE
from llmos.store.usage import Window

PREFIX = "llmos:limits:"


class RedisCounters:
    keeps_records = False
    """The store keeps the usage records; these counts only feed the limits."""

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: Any = None

    def _client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.url, socket_timeout=2,
                                               socket_connect_timeout=2)
        return self._redis

    def exchange(self, gateway: str, added: dict[Window, tuple[int, int]],
                 in_flight: dict[str, int], *, minute: int, day: int, now: float,
                 fresh_s: float) -> tuple[dict[Window, tuple[int, int]], dict[str, int]]:
        """As ``store.usage.Usage.exchange``: add, then read every gateway's counts."""
        p = self.prefix
        write = self._client().pipeline(transaction=False)
        for (scope, kind, start), (requests, tokens) in added.items():
            ttl = 3 * MINUTE if kind == "m" else 2 * DAY
            key = f"{p}use:{kind}:{start}:{scope}"
            write.hincrby(key, "r", requests)
            write.hincrby(key, "t", tokens)
            write.expire(key, ttl)
            write.sadd(f"{p}scopes:{kind}:{start}", scope)
            write.expire(f"{p}scopes:{kind}:{start}", ttl)
        flight = f"{p}flight:{gateway}"
        write.delete(flight)
        busy = {scope: n for scope, n in in_flight.items() if n > 0}
        if busy:
            write.hset(flight, mapping=busy)
            write.expire(flight, math.ceil(fresh_s))
        write.zadd(f"{p}gateways", {gateway: now})
        write.zremrangebyscore(f"{p}gateways", "-inf", now - 10 * fresh_s)
        windows = (("m", minute - MINUTE), ("m", minute), ("d", day))
        for kind, start in windows:
            write.smembers(f"{p}scopes:{kind}:{start}")
        write.zrangebyscore(f"{p}gateways", now - fresh_s, "+inf")
        answers = write.execute()
        scopes, live = answers[-4:-1], answers[-1]

        read = self._client().pipeline(transaction=False)
        asked: list[Window] = []
        for (kind, start), members in zip(windows, scopes, strict=True):
            for member in sorted(members):
                scope = member.decode()
                asked.append((scope, kind, start))
                read.hmget(f"{p}use:{kind}:{start}:{scope}", "r", "t")
        others = [g.decode() for g in live if g.decode() != gateway]
        for other in others:
            read.hgetall(f"{p}flight:{other}")
        got = read.execute()
        totals = {window: (int(r or 0), int(t or 0))
                  for window, (r, t) in zip(asked, got[:len(asked)], strict=True)}
        flying: dict[str, int] = {}
        for counts in got[len(asked):]:
            for scope, n in counts.items():
                flying[scope.decode()] = flying.get(scope.decode(), 0) + int(n)
        return totals, flying

    def prune(self, before_minute: int, gone_before: float) -> None:
        """Nothing to do: every key expires by itself."""

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
