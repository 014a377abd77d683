"""Rate limits and quotas, pure: what a key or a project may spend, and the decision
for one more request given what has been spent.

Rates are counted in fixed one-minute windows and read as a sliding minute: the
previous window weighted by how much of it the last 60 s still cover, plus the
current one (Cloudflare's estimate; within a few percent of a true sliding log, at
two counters per scope). Budgets are per UTC day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MINUTE = 60
DAY = 86_400


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens (prompt and completion) per minute."""
    concurrent: int | None = None
    """Requests in flight at once."""
    tokens_per_day: int | None = None
    """Tokens per UTC day."""

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrent,
                                           self.tokens_per_day))


@dataclass(frozen=True)
class Spent:
    """What one scope (a key, a project) has spent, as counted everywhere."""

    previous_minute: tuple[int, int] = (0, 0)
    """(requests, tokens) of the minute window before the current one."""
    this_minute: tuple[int, int] = (0, 0)
    today_tokens: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class Refusal:
    message: str
    retry_after_s: int
    kind: str
    """``requests`` or ``tokens``: which limit (OpenAI's error ``type`` for a 429)."""


@dataclass(frozen=True)
class Headroom:
    """What is left, for the ``x-ratelimit-*`` headers."""

    limit_requests: int | None
    remaining_requests: int | None
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_s: float


def window_start(now: float, length: int) -> int:
    return int(now // length) * length


def sliding(spent: Spent, now: float) -> tuple[float, float]:
    """Requests and tokens over the last 60 s, estimated from the two windows."""
    weight = 1.0 - (now - window_start(now, MINUTE)) / MINUTE
    (pr, pt), (cr, ct) = spent.previous_minute, spent.this_minute
    return pr * weight + cr, pt * weight + ct


def decide(limits: Limits, spent: Spent, cost_tokens: int, now: float,
           what: str) -> Refusal | None:
    """Whether one more request, expected to cost ``cost_tokens``, fits ``limits``
    (``what`` names the scope in the message: "key 3f2a…", "project ml")."""
    next_minute = window_start(now, MINUTE) + MINUTE - now
    if limits.concurrent is not None and spent.in_flight >= limits.concurrent:
        return Refusal(f"{what} has {spent.in_flight} requests in flight, its limit of "
                       f"concurrent requests is {limits.concurrent}", 1, "requests")
    requests, tokens = sliding(spent, now)
    if limits.rpm is not None and requests + 1 > limits.rpm:
        return Refusal(f"{what} is over its limit of {limits.rpm} requests per minute",
                       max(1, math.ceil(next_minute)), "requests")
    if limits.tpm is not None:
        if cost_tokens > limits.tpm:
            return Refusal(f"this request may take {cost_tokens} tokens, more than {what}'s "
                           f"limit of {limits.tpm} tokens per minute: lower max_tokens",
                           60, "tokens")
        if tokens + cost_tokens > limits.tpm:
            return Refusal(f"{what} is over its limit of {limits.tpm} tokens per minute "
                           f"(this request may take {cost_tokens})",
                           max(1, math.ceil(next_minute)), "tokens")
    if limits.tokens_per_day is not None and spent.today_tokens >= limits.tokens_per_day:
        tomorrow = window_start(now, DAY) + DAY - now
        return Refusal(f"{what} has used its {limits.tokens_per_day} tokens for today "
                       "(UTC)", max(1, math.ceil(tomorrow)), "tokens")
    return None


def headroom(limits: Limits, spent: Spent, now: float) -> Headroom:
    requests, tokens = sliding(spent, now)
    return Headroom(
        limit_requests=limits.rpm,
        remaining_requests=max(0, int(limits.rpm - requests)) if limits.rpm else None,
        limit_tokens=limits.tpm,
        remaining_tokens=max(0, int(limits.tpm - tokens)) if limits.tpm else None,
        reset_s=window_start(now, MINUTE) + MINUTE - now)
