"""heap.settle: startup frozen out of the collector's sight, young collections rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from llmos import heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settle_freezes_what_startup_built_and_collects_the_young_less_often() -> None:
    built = [{"startup": i} for i in range(1000)]
    heap.settle()
    assert gc.get_freeze_count() >= len(built)
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
    # cycles made afterwards are still collected
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
