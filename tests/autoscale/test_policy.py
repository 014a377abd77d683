"""The autoscaling policy, look by look: up at once (counting replicas still starting),
down slowly, to zero when idle and back on the first arrival, capped by bounds and by
what cannot be placed."""

from __future__ import annotations

from dataclasses import replace

from llmos.autoscale.policy import Bounds, History, Observation, Policy

POLICY = Policy(Bounds(min=1, max=8, wait_s=1.0, percentile=0.99), cooldown_s=60)
QUIET = Observation(now=1000.0, rate_short=0.5, rate_long=0.5, service_s=2.0, slots=4,
                    ready=1, last_arrival=999.0)


def test_steady_traffic_keeps_the_fleet() -> None:
    decision = POLICY.decide(QUIET, History())
    assert decision.replicas == 1 and decision.reason == "steady"


def test_a_load_step_scales_up_at_once_and_starting_replicas_count() -> None:
    history = History()
    step = replace(QUIET, rate_short=6.0)  # 12 Erlangs on 4-slot replicas
    first = POLICY.decide(step, history)
    assert first.replicas >= 4 and first.servers >= 13 and first.reason.startswith("up")
    # While they load, the same traffic asks for no more than it already has.
    loading = replace(step, now=1001.0, starting=first.replicas - 1)
    assert POLICY.decide(loading, history).replicas == first.replicas


def test_waiting_requests_add_replicas_to_clear_them() -> None:
    calm = POLICY.decide(replace(QUIET, rate_short=2.0), History())
    backlog = POLICY.decide(replace(QUIET, rate_short=2.0, waiting=40), History())
    assert backlog.replicas > calm.replicas


def test_down_is_slow_only_after_the_cooldown_and_on_the_last_minute() -> None:
    history = History(changed_at=990.0)
    quiet_now = replace(QUIET, ready=5, rate_short=0.2, rate_long=0.2)
    assert POLICY.decide(quiet_now, history).replicas == 5  # cooling down
    later = replace(quiet_now, now=1051.0)
    assert POLICY.decide(later, history).replicas == 1  # (straight to what is needed)
    one_by_one = Policy(POLICY.bounds, cooldown_s=60, down_step=1)
    assert one_by_one.decide(later, History(changed_at=990.0)).replicas == 4
    # A busy last minute holds the fleet even when the last seconds were quiet.
    busy_minute = replace(quiet_now, now=2000.0, rate_long=6.0)
    assert POLICY.decide(busy_minute, History()).replicas == 5


def test_scale_to_zero_after_the_idle_window_and_back_on_the_first_arrival() -> None:
    policy = Policy(Bounds(min=0, max=4, idle_s=300))
    idle = replace(QUIET, rate_short=0.0, rate_long=0.0, last_arrival=600.0)
    assert policy.decide(replace(idle, now=800.0), History()).replicas == 1  # not yet
    assert policy.decide(idle, History()).replicas == 0
    cold = replace(idle, ready=0, waiting=1, last_arrival=1000.0)
    assert policy.decide(cold, History()).replicas == 1


def test_bounds_and_unplaceable_replicas_cap_the_count() -> None:
    flood = replace(QUIET, rate_short=100.0)
    assert POLICY.decide(flood, History()).replicas == 8  # max
    held = POLICY.decide(replace(flood, ready=3, unplaceable=1), History())
    assert held.replicas == 3 and "cannot be placed" in held.reason
    assert Policy(Bounds(min=2)).decide(replace(QUIET, ready=2, rate_short=0.0,
                                                rate_long=0.0), History()).replicas == 2


def test_noise_in_the_short_window_adds_no_replica() -> None:
    steady = replace(QUIET, rate_short=2.0, rate_long=2.0, ready=3)
    assert POLICY.decide(steady, History()).replicas == 3
    noisy = replace(steady, rate_short=2.8)  # 28 arrivals in 10 s where 20 are usual
    assert POLICY.decide(noisy, History()).replicas == 3
    burst = replace(steady, rate_short=6.0)
    assert POLICY.decide(burst, History()).replicas > 3
