"""Erlang C against exact textbook values, a log-space form for large fleets, and a
simulated FCFS queue at steady state (exponential and deterministic service)."""

from __future__ import annotations

import heapq
import math
import random
from fractions import Fraction

import pytest

from llmos.autoscale.erlang import (
    Queue,
    erlang_b,
    erlang_c,
    fewest_servers,
    mean_wait,
    p_wait_longer,
    wait_percentile,
)


def exact_erlang_c(load: int, servers: int) -> Fraction:
    """The textbook sum, in exact rationals (small fleets only)."""
    top = Fraction(load ** servers, math.factorial(servers)) * Fraction(servers,
                                                                       servers - load)
    below = sum(Fraction(load ** k, math.factorial(k)) for k in range(servers))
    return top / (below + top)


def log_erlang_c(load: float, servers: int) -> float:
    """The same sum in log space (lgamma), for fleets whose factorials overflow."""
    terms = [k * math.log(load) - math.lgamma(k + 1) for k in range(servers)]
    last = (servers * math.log(load) - math.lgamma(servers + 1)
            + math.log(servers / (servers - load)))
    peak = max([*terms, last])
    total = sum(math.exp(t - peak) for t in terms) + math.exp(last - peak)
    return math.exp(last - peak) / total


def test_the_textbook_values() -> None:
    assert erlang_c(2, 3) == pytest.approx(4 / 9, abs=1e-12)  # A = 2 Erlangs, 3 servers
    assert erlang_b(2, 3) == pytest.approx(4 / 19, abs=1e-12)
    for load in (1, 5, 10):
        for servers in range(load + 1, load + 12):
            assert erlang_c(load, servers) == pytest.approx(
                float(exact_erlang_c(load, servers)), rel=1e-12)
    assert erlang_c(0, 4) == 0.0 and erlang_c(5, 5) == 1.0  # idle; unstable


def test_large_fleets_stay_finite_and_exact() -> None:
    for load, servers in ((950.0, 1000), (4900.0, 5000), (19_990.0, 20_000)):
        value = erlang_c(load, servers)
        assert 0 < value < 1
        assert value == pytest.approx(log_erlang_c(load, servers), rel=1e-9)


def test_the_fewest_servers_meet_the_objective_and_one_fewer_does_not() -> None:
    for rate, service_s, wait_s, cv2 in ((3.0, 1.0, 0.5, 1.0), (40.0, 2.5, 1.0, 0.3),
                                         (500.0, 4.0, 0.2, 2.0)):
        c = fewest_servers(rate, service_s, wait_s=wait_s, percentile=0.99,
                           service_cv2=cv2)
        assert p_wait_longer(Queue(rate, service_s, c, cv2), wait_s) <= 0.01
        assert p_wait_longer(Queue(rate, service_s, c - 1, cv2), wait_s) > 0.01
        assert wait_percentile(Queue(rate, service_s, c, cv2), 0.99) <= wait_s + 1e-9
    assert fewest_servers(0.0, 1.0, wait_s=1.0) == 0
    with pytest.raises(ValueError, match="Erlangs need more than"):
        fewest_servers(1e6, 1e3, wait_s=1.0)  # (refused at once, not searched)


def simulate(rate: float, servers: int, service: random.Random, draw: str,
             service_s: float, n: int = 200_000) -> list[float]:
    """Waits of an FCFS queue with Poisson arrivals (the first tenth dropped)."""
    arrivals = random.Random(7)
    free = [0.0] * servers
    t, waits = 0.0, []
    for _ in range(n):
        t += arrivals.expovariate(rate)
        held = service.expovariate(1 / service_s) if draw == "exp" else service_s
        start = max(t, heapq.heappop(free))
        heapq.heappush(free, start + held)
        waits.append(start - t)
    return waits[n // 10:]


@pytest.mark.parametrize(("draw", "cv2", "tolerance"), [("exp", 1.0, 0.08),
                                                        ("fixed", 0.0, 0.12)])
def test_the_formulas_match_a_simulated_queue(draw: str, cv2: float, tolerance: float) -> None:
    rate, service_s, servers = 3.0, 1.0, 4  # 75 % busy
    # (seeded: the same draws every run; over seeds the means fall within 3 % for
    # exponential service, and Allen-Cunneen is 5.5 % under for fixed service)
    waits = simulate(rate, servers, random.Random(11), draw, service_s, n=400_000)
    queue = Queue(rate, service_s, servers, service_cv2=cv2)
    assert sum(waits) / len(waits) == pytest.approx(mean_wait(queue), rel=tolerance)
    measured = sum(w > 1.0 for w in waits) / len(waits)
    assert measured == pytest.approx(p_wait_longer(queue, 1.0), rel=2 * tolerance)
