"""Two gateways' counts meeting in Redis (``counters_url``): what each adds, the other
reads; requests in flight count while their gateway reports, and not after."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from llmos.auth.limits import DAY, MINUTE, window_start
from llmos.gateway.redis_counters import RedisCounters
from tests.conftest import require_service

URL = "redis://127.0.0.1:6379/13"


def test_two_gateways_meet_in_redis() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"llmos:test:{uuid.uuid4().hex[:8]}:"
    first, second = RedisCounters(URL, prefix), RedisCounters(URL, prefix)
    now = time.time()
    minute, day = window_start(now, MINUTE), window_start(now, DAY)
    at: dict[str, Any] = {"minute": minute, "day": day, "now": now, "fresh_s": 10.0}
    try:
        first.exchange("a", {("key:k", "m", minute): (1, 10), ("key:k", "d", day): (1, 0),
                             ("key:k", "m", minute - MINUTE): (4, 40)},
                       {"key:k": 2, "key:idle": 0}, **at)
        totals, others = second.exchange("b", {("key:k", "m", minute): (2, 5)},
                                         {"key:k": 1}, **at)
        assert totals == {("key:k", "m", minute): (3, 15), ("key:k", "d", day): (1, 0),
                          ("key:k", "m", minute - MINUTE): (4, 40)}
        assert others == {"key:k": 2}  # the first gateway's, not its own
        totals, others = first.exchange("a", {}, {}, **at)
        assert totals[("key:k", "m", minute)] == (3, 15) and others == {"key:k": 1}
        # A gateway silent for longer than fresh_s no longer holds requests in flight.
        _, others = first.exchange("a", {}, {}, **(at | {"now": now + 11}))
        assert others == {}
    finally:
        first.close()
        second.close()
        client = redis.Redis.from_url(URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()
