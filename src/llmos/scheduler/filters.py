"""Filter plugins: which nodes may take a replica of a deployment, and why not.

Each filter answers for one deployment over every node at once (``mask``) and, for a
node it rejected, says why in words (``why``). ``static`` filters depend only on the
snapshot and run once per (deployment, node); the others also on what the plan has
placed so far (free resources, replicas per node), and are re-checked as it places.
A deployment that cannot be placed is explained by the first filter that rejects each
node, counted by ``kind`` as kube-scheduler does ("0/3 nodes fit: 2 insufficient
memory, 1 cordoned").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from llmos.scheduler.model import Deployment
from llmos.scheduler.table import Bools, Floats, Ints, NodeTable, human


@dataclass
class Fit:
    """One deployment against every node, at one moment of the plan."""

    table: NodeTable
    deployment: Deployment
    need: Floats
    """(3,) what one replica needs."""
    free: Floats
    """(N, 3) what each node has left."""
    count: Ints
    """(N,) replicas of this deployment on each node (placed ones included)."""
    holders: Mapping[int, Sequence[str]] = field(default_factory=dict)
    """node index -> ids of this deployment's replicas there (for the reasons)."""


class Filter(Protocol):
    name: str
    kind: str
    """The reason's short form, counted in the summary."""
    static: bool

    def mask(self, fit: Fit) -> Bools: ...

    def why(self, fit: Fit, i: int) -> str: ...


class Ready:
    name, kind, static = "ready", "not ready", True

    def mask(self, fit: Fit) -> Bools:
        return fit.table.ready.copy()

    def why(self, fit: Fit, i: int) -> str:
        return "not ready (lost or not registered)"


class Schedulable:
    name, kind, static = "schedulable", "cordoned", True

    def mask(self, fit: Fit) -> Bools:
        ok: Bools = ~fit.table.cordoned
        return ok

    def why(self, fit: Fit, i: int) -> str:
        return "cordoned"


class Avoid:
    name, kind, static = "avoid", "moving off", True

    def mask(self, fit: Fit) -> Bools:
        ok = np.ones(len(fit.table.nodes), dtype=bool)
        for name in fit.deployment.avoid:
            i = fit.table.index.get(name)
            if i is not None:
                ok[i] = False
        return ok

    def why(self, fit: Fit, i: int) -> str:
        return "a replica is being moved off it"


class NodeSelector:
    name, kind, static = "node-selector", "label missing", True

    def mask(self, fit: Fit) -> Bools:
        ok = np.ones(len(fit.table.nodes), dtype=bool)
        for key, value in fit.deployment.node_selector.items():
            ok &= fit.table.label(key) == value
        return ok

    def why(self, fit: Fit, i: int) -> str:
        labels = fit.table.nodes[i].labels
        wrong = [f"{k}={v}" for k, v in fit.deployment.node_selector.items()
                 if labels.get(k) != v]
        return f"label {', '.join(wrong)} missing"


class AntiAffinity:
    name, kind, static = "anti-affinity", "anti-affinity", False

    def mask(self, fit: Fit) -> Bools:
        if not fit.deployment.anti_affinity:
            return np.ones(len(fit.table.nodes), dtype=bool)
        ok: Bools = fit.count == 0
        return ok

    def why(self, fit: Fit, i: int) -> str:
        held = fit.holders.get(i)
        if held:
            return f"anti-affinity with replica {held[0]}"
        return "anti-affinity with a replica this plan places"


class Enough:
    """One resource: a node fits if what it has free covers one replica's need."""

    static = False

    def __init__(self, column: int, resource: str) -> None:
        self.column = column
        self.resource = resource
        self.name = f"resources-{resource}"
        self.kind = f"insufficient {resource}"

    def mask(self, fit: Fit) -> Bools:
        need = fit.need[self.column]
        if need <= 0:
            return np.ones(len(fit.table.nodes), dtype=bool)
        ok: Bools = fit.free[:, self.column] >= need
        return ok

    def why(self, fit: Fit, i: int) -> str:
        need, free = fit.need[self.column], fit.free[i, self.column]
        if self.resource == "memory":
            return f"needs {human(need)} memory, {human(free)} free"
        unit = "cores" if self.resource == "cpu" else "GPUs"
        return f"needs {need:g} {unit}, {free:g} free"


FILTERS: tuple[Filter, ...] = (Ready(), Schedulable(), Avoid(), NodeSelector(), AntiAffinity(),
                               Enough(1, "memory"), Enough(0, "cpu"), Enough(2, "gpus"))
"""In the order their reasons are given: the first that rejects a node names it."""


def static_mask(fit: Fit, filters: Sequence[Filter] = FILTERS) -> Bools:
    ok = np.ones(len(fit.table.nodes), dtype=bool)
    for f in filters:
        if f.static:
            ok &= f.mask(fit)
    return ok


def fits_now(fit: Fit, filters: Sequence[Filter] = FILTERS) -> Bools:
    """Every filter, at this moment of the plan."""
    ok = np.ones(len(fit.table.nodes), dtype=bool)
    for f in filters:
        ok &= f.mask(fit)
    return ok


REASON_NODES = 100
"""Nodes whose rejection a plan words in full (all are counted in the summary)."""


def reasons(fit: Fit, filters: Sequence[Filter] = FILTERS, *,
            limit: int = REASON_NODES) -> tuple[Counter[str], dict[str, str]]:
    """How many nodes each filter rejected first (by kind), and the words for the first
    ``limit`` of them."""
    first = np.full(len(fit.table.nodes), -1, dtype=np.int64)
    for k, f in reversed(list(enumerate(filters))):
        first[~f.mask(fit)] = k
    kinds: Counter[str] = Counter()
    for k, count in zip(*np.unique(first[first >= 0], return_counts=True), strict=True):
        kinds[filters[int(k)].kind] += int(count)
    words = {fit.table.nodes[i].name: filters[int(first[i])].why(fit, int(i))
             for i in np.flatnonzero(first >= 0)[:limit]}
    return kinds, words
