"""Score plugins: how much a deployment prefers each node that fits it.

Every plugin returns one value per node in [0, 1] (1 is best), so plugins compare
without rescaling; a deployment's score for a node is their weighted mean, with the
weights its strategy gives. Scores are taken on the snapshot as it came in; what the
plan places changes them only through the spread penalty (``SPREAD_PENALTY`` per
replica of the same deployment already on the node), which the solvers apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from llmos.scheduler.filters import Fit
from llmos.scheduler.model import Strategy
from llmos.scheduler.table import Floats


class Score(Protocol):
    name: str

    def score(self, fit: Fit) -> Floats: ...


def _utilisation_after(fit: Fit) -> Floats:
    """Mean fraction of CPU and memory taken once one more replica is on the node."""
    cap = fit.table.capacity[:, :2]
    after = cap - fit.free[:, :2] + fit.need[:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(cap > 0, after / np.where(cap > 0, cap, 1.0), 1.0)
    out: Floats = np.clip(frac.mean(axis=1), 0.0, 1.0)
    return out


class Binpack:
    """Fill the fullest node that fits first, leaving whole nodes free."""

    name = "binpack"

    def score(self, fit: Fit) -> Floats:
        return _utilisation_after(fit)


class LeastAllocated:
    """Prefer the emptiest node."""

    name = "least-allocated"

    def score(self, fit: Fit) -> Floats:
        out: Floats = 1.0 - _utilisation_after(fit)
        return out


class Cached:
    """Prefer a node that already holds the model version (no pull)."""

    name = "cached"

    def score(self, fit: Fit) -> Floats:
        return fit.table.cached(fit.deployment.model)


class Load:
    """Prefer a node whose replicas are idle now (live load from heartbeats)."""

    name = "load"

    def score(self, fit: Fit) -> Floats:
        out: Floats = 1.0 - fit.table.load
        return out


SCORES: dict[str, Score] = {s.name: s for s in (Binpack(), LeastAllocated(), Cached(), Load())}

WEIGHTS: Mapping[Strategy, Mapping[str, float]] = {
    "spread": {"least-allocated": 1.0, "cached": 1.0, "load": 1.0},
    "binpack": {"binpack": 2.0, "cached": 1.0, "load": 0.5},
}

SPREAD_PENALTY: Mapping[Strategy, float] = {"spread": 1.0, "binpack": 0.0}
"""Taken off a node's score per replica of the deployment already there: with scores
in [0, 1], ``spread`` puts a second replica on a node only when every node has one."""


def weighted(fit: Fit, strategy: Strategy) -> Floats:
    weights = WEIGHTS[strategy]
    total = sum(weights.values())
    out = np.zeros(len(fit.table.nodes), dtype=np.float64)
    for name, weight in weights.items():
        out += weight * np.clip(SCORES[name].score(fit), 0.0, 1.0)
    result: Floats = out / total
    return result
