"""What the scheduler takes in (a cluster snapshot) and gives back (a plan with reasons).

Plain frozen dataclasses: no I/O, no clock. Memory is in bytes, CPU in cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Strategy = Literal["spread", "binpack"]
STRATEGIES: tuple[Strategy, ...] = ("spread", "binpack")

GiB = 1024**3


@dataclass(frozen=True)
class Resources:
    cpu: float = 0.0
    memory: int = 0
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory,
                         self.gpus + other.gpus)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Resources:
        return cls(cpu=float(data.get("cpu", 0.0)), memory=int(data.get("memory", 0)),
                   gpus=int(data.get("gpus", 0)))


@dataclass(frozen=True)
class Node:
    """A machine as its agent reports it."""

    name: str
    capacity: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    """False once the node is lost (missed heartbeats) or has not registered yet."""
    cordoned: bool = False
    cached: frozenset[str] = frozenset()
    """Model versions (``name@N``) already in the node's cache."""
    load: float = 0.0
    """Live utilisation, 0 (idle) … 1 (saturated), from the latest heartbeat."""


@dataclass(frozen=True)
class Deployment:
    """Desired state of one deployment, as the scheduler needs it."""

    name: str
    model: str
    """The pinned version (``name@N``) its replicas load."""
    replicas: int
    resources: Resources
    """What one replica needs: the registry's estimate for its settings, or what the
    user asked for."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    strategy: Strategy = "spread"
    anti_affinity: bool = False
    """At most one replica of this deployment per node."""
    priority: int = 0
    generation: int = 1
    """Bumped by every change that needs new replicas (version, settings, resources)."""
    max_new: int | None = None
    """At most this many new replicas in one plan (a rolling change places one at a time)."""
    avoid: frozenset[str] = frozenset()
    """Nodes its new replicas must not go to (a replica is being moved off them)."""


@dataclass(frozen=True)
class Replica:
    id: str
    deployment: str
    node: str
    reserved: Resources
    """What was set aside for it when it was placed."""
    rss: int = 0
    """Measured resident memory, from its agent's heartbeat (0: not measured yet)."""
    generation: int = 1
    state: str = "running"
    """``pending`` … ``running`` / ``ready``; ``failed`` replicas are not counted."""

    @property
    def memory_used(self) -> int:
        """Memory never oversold: the larger of its reservation and its measured RSS."""
        return max(self.reserved.memory, self.rss)


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[Node, ...]
    deployments: tuple[Deployment, ...]
    replicas: tuple[Replica, ...] = ()

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> ClusterSnapshot:
        """From JSON-shaped data (the fixture files, and the controller's store rows)."""
        nodes = tuple(Node(
            name=n["name"], capacity=Resources.of(n["capacity"]),
            labels=dict(n.get("labels", {})), ready=bool(n.get("ready", True)),
            cordoned=bool(n.get("cordoned", False)),
            cached=frozenset(n.get("cached", ())), load=float(n.get("load", 0.0)))
            for n in data.get("nodes", ()))
        deployments = tuple(Deployment(
            name=d["name"], model=d["model"], replicas=int(d["replicas"]),
            resources=Resources.of(d["resources"]),
            node_selector=dict(d.get("node_selector", {})),
            strategy=d.get("strategy", "spread"), anti_affinity=bool(d.get("anti_affinity")),
            priority=int(d.get("priority", 0)), generation=int(d.get("generation", 1)),
            max_new=d.get("max_new"))
            for d in data.get("deployments", ()))
        replicas = tuple(Replica(
            id=r["id"], deployment=r["deployment"], node=r["node"],
            reserved=Resources.of(r["reserved"]), rss=int(r.get("rss", 0)),
            generation=int(r.get("generation", 1)), state=r.get("state", "running"))
            for r in data.get("replicas", ()))
        return cls(nodes, deployments, replicas)


# --- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    deployment: str
    node: str
    score: float
    """The node's weighted, normalised score for this deployment (0 … 1)."""
    resources: Resources


@dataclass(frozen=True)
class Stop:
    replica: str
    deployment: str
    node: str
    reason: str


@dataclass(frozen=True)
class Unschedulable:
    deployment: str
    missing: int
    """Replicas asked for and not placed."""
    summary: str
    """``0/3 nodes fit: 2 insufficient memory, 1 cordoned`` (kube-scheduler's shape)."""
    nodes: Mapping[str, str]
    """Why each node was rejected, in full (``needs 1.3 GiB memory, 0.9 GiB free``); on a
    large cluster only the first ``filters.REASON_NODES`` (the summary counts them all)."""


@dataclass(frozen=True)
class Objective:
    placed: float
    """The placement part: one unit per replica placed, times (1 + its priority)."""
    score: float
    """The preference part: the placed replicas' scores minus the spread penalty."""

    @property
    def total(self) -> float:
        return self.placed * PLACE_WEIGHT + self.score


PLACE_WEIGHT = 10_000.0
"""Placing a replica outweighs any difference of scores."""


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    stops: tuple[Stop, ...]
    unschedulable: tuple[Unschedulable, ...]
    objective: Objective
    solver: Literal["milp", "greedy", "none"]
    optimal: bool
    """True when the MILP proved its answer optimal (greedy answers are not proved)."""
