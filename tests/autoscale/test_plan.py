"""Capacity planning: every slot count sized by Erlang C, the cheapest in memory wins,
and the choice moves with the traffic, the objective and the memory per slot."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmos.autoscale.erlang import Queue, p_wait_longer
from llmos.autoscale.plan import Objective, SlotSpeed, cheapest, shapes

GIB = 1 << 30
# A replica's speeds per request as its slots fill (decode shares the machine).
CURVE = [SlotSpeed(1, 2000, 40), SlotSpeed(4, 1500, 30), SlotSpeed(8, 1000, 20),
         SlotSpeed(16, 600, 11)]


def memory(weights: int, per_slot: int) -> Callable[[int], int]:
    return lambda slots: weights + per_slot * slots


def test_every_shape_meets_the_objective_with_no_replica_to_spare() -> None:
    objective = Objective(wait_s=0.5, percentile=0.99)
    for shape in shapes(4.0, 500, 200, CURVE, memory(2 * GIB, GIB // 4), objective):
        servers = shape.replicas * shape.slots
        assert p_wait_longer(Queue(4.0, shape.service_s, servers), 0.5) <= 0.01
        assert shape.wait_s <= 0.5 + 1e-9 and shape.utilization < 1
        fewer = (shape.replicas - 1) * shape.slots
        assert fewer == 0 or p_wait_longer(Queue(4.0, shape.service_s, fewer), 0.5) > 0.01


def test_heavy_weights_favour_more_slots_and_big_caches_fewer() -> None:
    objective = Objective(wait_s=1.0)
    heavy_weights = cheapest(4.0, 500, 200, CURVE, memory(16 * GIB, GIB // 16), objective)
    big_caches = cheapest(4.0, 500, 200, CURVE, memory(GIB // 4, 2 * GIB), objective)
    assert heavy_weights.slots > big_caches.slots
    assert heavy_weights.replicas < big_caches.replicas


def test_more_traffic_or_a_tighter_objective_never_costs_less() -> None:
    mem = memory(2 * GIB, GIB // 4)
    base = cheapest(2.0, 500, 200, CURVE, mem, Objective(wait_s=1.0))
    busier = cheapest(8.0, 500, 200, CURVE, mem, Objective(wait_s=1.0))
    tighter = cheapest(2.0, 500, 200, CURVE, mem, Objective(wait_s=0.05, percentile=0.999))
    assert busier.memory_bytes >= base.memory_bytes
    assert tighter.memory_bytes >= base.memory_bytes


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        cheapest(0.0, 500, 200, CURVE, memory(GIB, GIB), Objective(wait_s=1.0))
    with pytest.raises(ValueError):
        cheapest(1.0, 500, 200, [], memory(GIB, GIB), Objective(wait_s=1.0))
