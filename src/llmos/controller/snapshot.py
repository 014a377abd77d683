"""From stored rows and live node statuses to the scheduler's snapshot; rolling changes.

Pure: rows and statuses in, scheduler types out, the time passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmos.controller.nodes import NodeDirectory
from llmos.scheduler import model as sched
from llmos.store.tables import Deployment, Node, Replica

FAILED_HOLD_S = 10.0
"""A failed replica keeps its place this long before it is replaced (no hot loop of
failing starts)."""

LIVE_STATES = ("scheduled", "pulling", "starting", "ready")


def resources_of(data: Mapping[str, object]) -> sched.Resources:
    return sched.Resources.of(data)


@dataclass(frozen=True)
class Rollout:
    """What a rolling change does now for one deployment."""

    max_new: int | None
    """None: no rollout (place freely)."""
    retire: tuple[str, ...] = ()
    """Outdated replicas to drain and stop now."""
    outdated: frozenset[str] = frozenset()
    """Replicas to be replaced: of an older generation, or on a draining node."""


def rollout(deployment: Deployment, replicas: Sequence[Replica],
            draining: frozenset[str] = frozenset(),
            moving: frozenset[str] = frozenset()) -> Rollout:
    """One replica at a time: start a new one, wait until it is ready, retire an old one.

    Old replicas keep serving until a new one is ready to take their place, so the
    deployment never has fewer ready replicas than it asked for (when it had them).
    A replica on a draining node, or one being moved (``moving``: a rebalance), is
    replaced the same way.
    """
    live = [r for r in replicas if r.state in LIVE_STATES]
    old = [r for r in live if r.generation != deployment.generation or r.node in draining
           or r.id in moving]
    if not old:
        return Rollout(None)
    new = [r for r in live if r not in old]
    ready_new = [r for r in new if r.state == "ready"]
    surplus = len(ready_new) + len(old) - deployment.replicas
    # retire the old replicas that new ready ones (or a scale-down) made surplus,
    # those not ready yet first
    old.sort(key=lambda r: (r.state == "ready", r.created_at))
    retire = tuple(r.id for r in old[:max(surplus, 0)])
    pending_new = len(new) - len(ready_new)
    return Rollout(max_new=0 if pending_new else 1, retire=retire,
                   outdated=frozenset(r.id for r in old))


def snapshot(deployments: Sequence[Deployment], needs: Mapping[str, sched.Resources],
             nodes: Sequence[Node], directory: NodeDirectory, replicas: Sequence[Replica],
             rollouts: Mapping[str, Rollout], *, now: float,
             failed_since: Mapping[str, float],
             avoid: Mapping[str, frozenset[str]] | None = None) -> sched.ClusterSnapshot:
    """``needs``: what one replica of each deployment needs (by deployment name)."""
    stored = {n.name: n for n in nodes}
    cluster_nodes = []
    for heard in directory.all():
        status = heard.status
        row = stored.get(status.node)
        cluster_nodes.append(sched.Node(
            name=status.node,
            capacity=sched.Resources(cpu=status.cpus, memory=status.memory,
                                     gpus=status.gpus),
            labels=dict(status.labels), ready=heard.alive(now),
            cordoned=bool(row and row.cordoned), cached=frozenset(status.cached),
            load=status.load))
    cluster_deployments = []
    for d in deployments:
        if d.replicas <= 0 and not any(
                r.deployment == d.name and r.project == d.project for r in replicas):
            continue
        plan = rollouts.get(d.name, Rollout(None))
        cluster_deployments.append(sched.Deployment(
            name=d.name, model=d.served_ref, replicas=d.replicas, resources=needs[d.name],
            node_selector=dict(d.node_selector or {}),
            strategy="binpack" if d.strategy == "binpack" else "spread",
            anti_affinity=d.anti_affinity, priority=d.priority, generation=d.generation,
            max_new=plan.max_new, avoid=(avoid or {}).get(d.name, frozenset())))
    retired = {rid for plan in rollouts.values() for rid in plan.retire}
    outdated = {rid for plan in rollouts.values() for rid in plan.outdated}
    cluster_replicas = []
    by_deployment: dict[str, list[Replica]] = defaultdict(list)
    for r in replicas:
        by_deployment[r.deployment].append(r)
        if r.id in retired:
            continue
        state = r.state
        if state == "failed" and now - failed_since.get(r.id, now) < FAILED_HOLD_S:
            state = "starting"  # held: it keeps its place a while
        cluster_replicas.append(sched.Replica(
            id=r.id, deployment=r.deployment, node=r.node, reserved=resources_of(r.reserved),
            rss=r.rss, generation=0 if r.id in outdated else r.generation, state=state))
    return sched.ClusterSnapshot(tuple(cluster_nodes), tuple(cluster_deployments),
                                 tuple(cluster_replicas))
