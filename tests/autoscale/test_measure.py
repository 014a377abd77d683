"""What the autoscaler measures: arrival rates over windows, service times, requests in
flight per gateway, cold starts (pure, every time given)."""

from __future__ import annotations

import pytest

from llmos.autoscale.measure import Arrivals, ColdStarts, InFlight, ServiceTimes


def test_arrival_rates_over_short_and_long_windows() -> None:
    arrivals = Arrivals()
    for second in range(60):  # one a second for a minute, then a burst of 50
        arrivals.add(1, 1000.0 + second)
    arrivals.add(50, 1059.5)
    now = 1059.9
    assert arrivals.count(10, now) == 60
    assert arrivals.rate(10, now) == pytest.approx(6.0)
    assert arrivals.rate(60, now) == pytest.approx(110 / 60)
    assert arrivals.last_at == 1059.5
    # Watched for 5 s only: the minute's rate is over those 5 s, not diluted.
    fresh = Arrivals()
    fresh.add(10, 2000.2)
    assert fresh.rate(60, 2004.5, since=2000.0) == pytest.approx(10 / 5.5)
    # Old buckets go.
    assert arrivals.count(60, now + 200) == 0


def test_service_times_mean_and_variability() -> None:
    service = ServiceTimes(keep=4, max_age_s=100)
    assert service.mean_cv2(0.0) is None
    service.add(2.0, 1.0)
    assert service.mean_cv2(1.0) == (2.0, 1.0)  # one: no variability known
    for seconds in (1.0, 3.0, 2.0, 2.0):  # keeps the last 4
        service.add(seconds, 2.0)
    mean, cv2 = service.mean_cv2(2.0)  # type: ignore[misc]
    assert mean == pytest.approx(2.0) and cv2 == pytest.approx((2 / 3) / 4)
    assert service.mean_cv2(200.0) is None  # all too old


def test_in_flight_sums_the_gateways_and_forgets_a_silent_one() -> None:
    flight = InFlight(stale_s=3.0)
    flight.report("g1", 5, 10.0)
    flight.report("g2", 2, 11.0)
    assert flight.total(11.0) == 7
    assert flight.total(13.5) == 2  # g1 said nothing for 3.5 s
    assert flight.report("g2", 0, 12.0) == 2
    assert flight.total(12.0) == 5


def test_cold_starts_keep_the_last_few() -> None:
    cold = ColdStarts(keep=3)
    assert cold.median() is None
    for seconds in (10.0, 3.0, 4.0, 5.0):
        cold.add(seconds)
    assert cold.last() == 5.0 and cold.median() == 4.0
