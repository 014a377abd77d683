"""The cluster as arrays: one row per node, one column per resource.

Filters and scores read it a deployment at a time, over all nodes at once, so a
check runs once per (deployment, node) without a Python call per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmos.scheduler.model import ClusterSnapshot, Node, Resources

RESOURCES = ("cpu", "memory", "gpus")
"""Column order of every (…, 3) resource array."""

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


def vector(r: Resources) -> Floats:
    return np.array([r.cpu, float(r.memory), float(r.gpus)], dtype=np.float64)


@dataclass
class NodeTable:
    nodes: tuple[Node, ...]
    index: dict[str, int]
    capacity: Floats
    """(N, 3)"""
    used: Floats
    """(N, 3): what the node's replicas take (memory: max of reservation and RSS)."""
    ready: Bools
    cordoned: Bools
    load: Floats
    labels: dict[str, npt.NDArray[np.object_]]
    """label key -> (N,) values, None where a node lacks the key."""
    _cached: dict[str, list[int]] | None = None

    @property
    def free(self) -> Floats:
        free: Floats = np.maximum(self.capacity - self.used, 0.0)
        return free

    def label(self, key: str) -> npt.NDArray[np.object_]:
        column = self.labels.get(key)
        if column is None:
            column = np.full(len(self.nodes), None, dtype=object)
        return column

    def cached(self, model: str) -> Floats:
        """(N,) 1.0 where the node holds ``model`` in its cache."""
        if self._cached is None:
            self._cached = {}
            for i, node in enumerate(self.nodes):
                for held in node.cached:
                    self._cached.setdefault(held, []).append(i)
        out = np.zeros(len(self.nodes), dtype=np.float64)
        out[self._cached.get(model, [])] = 1.0
        return out

    @classmethod
    def of(cls, snapshot: ClusterSnapshot) -> NodeTable:
        nodes = snapshot.nodes
        index = {n.name: i for i, n in enumerate(nodes)}
        capacity = np.array([vector(n.capacity) for n in nodes], dtype=np.float64)
        capacity = capacity.reshape(len(nodes), len(RESOURCES))
        used = np.zeros_like(capacity)
        for r in snapshot.replicas:
            i = index.get(r.node)
            if i is None or r.state == "failed":
                continue
            used[i] += (r.reserved.cpu, float(r.memory_used), float(r.reserved.gpus))
        keys = {k for n in nodes for k in n.labels}
        labels = {k: np.array([n.labels.get(k) for n in nodes], dtype=object) for k in keys}
        return cls(
            nodes=nodes, index=index, capacity=capacity, used=used,
            ready=np.array([n.ready for n in nodes], dtype=bool),
            cordoned=np.array([n.cordoned for n in nodes], dtype=bool),
            load=np.clip(np.array([n.load for n in nodes], dtype=np.float64), 0.0, 1.0),
            labels=labels)


def human(size: float) -> str:
    """Bytes as people read them: ``1.3 GiB``, ``512 MiB``."""
    if size >= 1024**3:
        return f"{size / 1024**3:.1f} GiB"
    return f"{size / 1024**2:.0f} MiB"
