"""Erlang C (M/M/c) and the Allen-Cunneen approximation (G/G/c).

``c`` servers (a deployment's replicas x slots: each slot serves one request at a time,
at the service rate measured *at that slot count*: a replica with 16 slots is not 16
replicas with one), requests arriving at rate ``λ`` (per second), each taking a mean
``1/μ`` seconds of a server. With offered load ``a = λ/μ`` (Erlangs) and ``a < c``:

- Erlang B by its recurrence ``B(k) = a·B(k-1) / (k + a·B(k-1))``, ``B(0) = 1``: no
  factorial and no power of ``a``, so it stays exact to rounding for any ``c``;
- the probability that a request waits, ``C = c·B / (c - a·(1 - B))``;
- the mean wait ``Wq = C / (cμ - λ)``, and ``P(W > t) = C·e^{-(cμ-λ)t}``.

LLM service times are far from exponential (their squared coefficient of variation
``cs²`` is often well below 1 for fixed-length outputs, above it for mixed lengths).
Allen-Cunneen scales the M/M/c wait by ``(ca² + cs²) / 2`` (``ca² = 1``: Poisson
arrivals); the tail here is the M/M/c tail with its decay slowed by the same factor,
a common approximation (exact for ``ca² = cs² = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_SERVERS = 100_000
"""No answer needs more (a bound on a search that a request may ask for)."""


@dataclass(frozen=True)
class Queue:
    """A G/G/c queue: its arrivals, its servers and how variable both are."""

    arrival_rate: float
    """λ: requests per second."""
    service_s: float
    """1/μ: mean seconds a request holds a server (a slot)."""
    servers: int
    """c: replicas x slots."""
    service_cv2: float = 1.0
    """cs²: variance / mean² of the service time (1: exponential)."""
    arrival_cv2: float = 1.0
    """ca²: of the times between arrivals (1: Poisson)."""

    @property
    def load(self) -> float:
        """a = λ/μ, the offered load in Erlangs."""
        return self.arrival_rate * self.service_s

    @property
    def utilization(self) -> float:
        return self.load / self.servers if self.servers else math.inf

    @property
    def stable(self) -> bool:
        return self.servers > 0 and self.load < self.servers

    @property
    def variability(self) -> float:
        """The Allen-Cunneen factor (ca² + cs²) / 2."""
        return (self.arrival_cv2 + self.service_cv2) / 2


def erlang_b(load: float, servers: int) -> float:
    """Blocking probability of M/M/c/c, by the stable recurrence."""
    if servers < 0 or load < 0:
        raise ValueError("servers and load are not negative")
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return b


def erlang_c(load: float, servers: int) -> float:
    """Probability that an arrival waits in M/M/c (1 when ``load >= servers``)."""
    if load <= 0:
        return 0.0
    if servers <= load:
        return 1.0
    b = erlang_b(load, servers)
    return servers * b / (servers - load * (1 - b))


def p_wait(queue: Queue) -> float:
    """Probability that a request waits at all."""
    return erlang_c(queue.load, queue.servers)


def mean_wait(queue: Queue) -> float:
    """Mean seconds in the queue, before a server takes the request (inf if unstable)."""
    if queue.arrival_rate <= 0:
        return 0.0
    if not queue.stable:
        return math.inf
    drain = queue.servers / queue.service_s - queue.arrival_rate  # cμ - λ
    return p_wait(queue) / drain * queue.variability


def p_wait_longer(queue: Queue, t: float) -> float:
    """P(W > t): the probability that a request waits more than ``t`` seconds."""
    if queue.arrival_rate <= 0:
        return 0.0
    if not queue.stable:
        return 1.0
    drain = queue.servers / queue.service_s - queue.arrival_rate
    return p_wait(queue) * math.exp(-drain * t / queue.variability)


def mean_response(queue: Queue) -> float:
    """Mean seconds in the system: the wait and the service."""
    return mean_wait(queue) + queue.service_s


def wait_percentile(queue: Queue, p: float) -> float:
    """The wait that a fraction ``p`` of requests do not exceed (0 when at least that
    fraction does not wait at all)."""
    if not 0 < p < 1:
        raise ValueError("p is a fraction strictly between 0 and 1")
    if queue.arrival_rate <= 0:
        return 0.0
    if not queue.stable:
        return math.inf
    waiting = p_wait(queue)
    if waiting <= 1 - p:
        return 0.0
    drain = queue.servers / queue.service_s - queue.arrival_rate
    return math.log(waiting / (1 - p)) * queue.variability / drain


def fewest_servers(arrival_rate: float, service_s: float, *, wait_s: float,
                   percentile: float = 0.99, service_cv2: float = 1.0,
                   arrival_cv2: float = 1.0) -> int:
    """The fewest servers for which ``P(W > wait_s) <= 1 - percentile`` (one pass of the
    Erlang B recurrence: linear in the answer)."""
    if arrival_rate <= 0:
        return 0
    if not 0 < percentile < 1:
        raise ValueError("percentile is a fraction strictly between 0 and 1")
    load = arrival_rate * service_s
    if load >= MAX_SERVERS:
        raise ValueError(f"{load:.3g} Erlangs need more than {MAX_SERVERS} servers")
    variability = (arrival_cv2 + service_cv2) / 2
    b = 1.0
    for servers in range(1, MAX_SERVERS + 1):
        b = load * b / (servers + load * b)  # Erlang B of `servers`
        if servers <= load:
            continue
        waits = servers * b / (servers - load * (1 - b))
        drain = servers / service_s - arrival_rate
        if waits * math.exp(-drain * wait_s / variability) <= 1 - percentile:
            return servers
    raise ValueError(f"no fleet of up to {MAX_SERVERS} servers meets the objective")
