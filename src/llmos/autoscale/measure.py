"""What the autoscaler measures per deployment, from the traffic it is told about
(pure: every call takes the time; no clock is read here).

- ``Arrivals``: requests arriving, counted in one-second buckets, read back as a rate
  over any window up to the longest kept (a short one for bursts, a long one for
  scaling down) and the time of the last arrival (the idle window).
- ``ServiceTimes``: how long finished requests held a slot, over the last
  ``keep`` of them within ``max_age_s``: mean and squared coefficient of variation
  (what Allen-Cunneen needs).
- ``InFlight``: requests admitted and not finished, as each gateway last reported them
  (a report older than ``stale_s`` counts for nothing: its gateway is gone).
- ``ColdStarts``: seconds from a replica's placement to its first ready, the last few.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Arrivals:
    keep_s: float = 120.0
    _buckets: deque[list[float]] = field(default_factory=deque)
    """[second, count] pairs, oldest first."""
    last_at: float | None = None

    def add(self, count: int, at: float) -> None:
        if count <= 0:
            return
        second = math.floor(at)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        elif self._buckets and self._buckets[-1][0] > second:  # late: the newest bucket
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        self._trim(at)

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] < now - self.keep_s:
            self._buckets.popleft()

    def count(self, window_s: float, now: float) -> int:
        """Arrivals in the last ``window_s`` seconds (whole seconds, this one included)."""
        since = math.floor(now) - math.ceil(window_s) + 1
        return int(sum(c for s, c in self._buckets if s >= since))

    def rate(self, window_s: float, now: float, *, since: float | None = None) -> float:
        """Arrivals per second over the window; over less when the deployment has been
        watched for less (``since``): a minute's rate is not diluted by the minute
        before anyone looked."""
        span = window_s if since is None else max(1.0, min(window_s, now - since + 1))
        return self.count(window_s, now) / span


@dataclass
class ServiceTimes:
    keep: int = 200
    max_age_s: float = 600.0
    _seen: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, seconds: float, at: float) -> None:
        if seconds <= 0 or not math.isfinite(seconds):
            return
        self._seen.append((at, seconds))
        while len(self._seen) > self.keep:
            self._seen.popleft()

    def _recent(self, now: float) -> list[float]:
        while self._seen and self._seen[0][0] < now - self.max_age_s:
            self._seen.popleft()
        return [s for _, s in self._seen]

    def count(self, now: float) -> int:
        return len(self._recent(now))

    def mean_cv2(self, now: float) -> tuple[float, float] | None:
        """(mean seconds, squared coefficient of variation), or None when nothing was
        measured (cv² is 1 until there are two)."""
        seen = self._recent(now)
        if not seen:
            return None
        mean = sum(seen) / len(seen)
        if len(seen) < 2:
            return mean, 1.0
        variance = sum((s - mean) ** 2 for s in seen) / (len(seen) - 1)
        return mean, variance / mean**2


@dataclass
class InFlight:
    stale_s: float = 3.0
    _by_gateway: dict[str, tuple[int, float]] = field(default_factory=dict)

    def report(self, gateway: str, count: int, at: float) -> int:
        """Record one gateway's count; the total before it."""
        before = self._by_gateway.get(gateway, (0, at))[0]
        self._by_gateway[gateway] = (count, at)
        return before

    def total(self, now: float) -> int:
        return sum(count for count, at in self._by_gateway.values()
                   if now - at <= self.stale_s)


@dataclass
class ColdStarts:
    keep: int = 5
    _seen: deque[float] = field(default_factory=deque)

    def add(self, seconds: float) -> None:
        if seconds > 0:
            self._seen.append(seconds)
            while len(self._seen) > self.keep:
                self._seen.popleft()

    def last(self) -> float | None:
        return self._seen[-1] if self._seen else None

    def median(self) -> float | None:
        if not self._seen:
            return None
        ordered = sorted(self._seen)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1]
                                                         + ordered[middle]) / 2
