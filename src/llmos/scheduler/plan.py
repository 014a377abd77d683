"""``plan()``: a cluster snapshot in, what to start and stop (with reasons) out.

Pure: no I/O, no clock; the controller calls it on every reconcile and the benchmark
times the same call.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Literal

import numpy as np

from llmos.scheduler.filters import FILTERS, Fit, reasons, static_mask
from llmos.scheduler.improve import ruin_recreate
from llmos.scheduler.model import (
    ClusterSnapshot,
    Deployment,
    Placement,
    Plan,
    Replica,
    Resources,
    Stop,
    Unschedulable,
)
from llmos.scheduler.scores import SPREAD_PENALTY, weighted
from llmos.scheduler.solvers import Problem, exact, exact_size, greedy, objective
from llmos.scheduler.table import NodeTable, vector

Solver = Literal["auto", "milp", "greedy"]

EXACT_LIMIT = 4_000
"""The MILP is tried when it would have at most this many binary variables."""


def plan(snapshot: ClusterSnapshot, *, solver: Solver = "auto",
         exact_limit: int = EXACT_LIMIT, time_limit_s: float = 2.0) -> Plan:
    table = NodeTable.of(snapshot)
    wanted = {d.name: d for d in snapshot.deployments}
    stops, live = _stops(snapshot, table, wanted)
    problem = _problem(snapshot, table, live)

    used: Literal["milp", "greedy", "none"] = "none"
    optimal = True
    counts = np.zeros_like(problem.existing)
    if problem.deployments:
        solved = None
        if solver == "milp" or (solver == "auto" and exact_size(problem) <= exact_limit):
            solved = exact(problem, time_limit_s=time_limit_s)
        if solved is not None:
            counts, optimal, used = solved.counts, solved.optimal, "milp"
        else:
            counts, optimal, used = greedy(problem), False, "greedy"
            ruin_recreate(problem, counts)

    placements: list[Placement] = []
    for d, deployment in enumerate(problem.deployments):
        need = problem.need[d]
        resources = Resources(cpu=float(need[0]), memory=int(need[1]), gpus=int(need[2]))
        for n in np.flatnonzero(counts[d]):
            placement = Placement(deployment.name, table.nodes[n].name,
                                  round(float(problem.score[d, n]), 4), resources)
            placements.extend([placement] * int(counts[d, n]))
    return Plan(placements=tuple(placements), stops=tuple(stops),
                unschedulable=tuple(_unschedulable(problem, counts, live)),
                objective=objective(problem, counts), solver=used, optimal=optimal)


def _stops(snapshot: ClusterSnapshot, table: NodeTable, wanted: dict[str, Deployment]
           ) -> tuple[list[Stop], dict[str, list[Replica]]]:
    """Replicas to stop, and the live replicas of each deployment's current generation."""
    stops: list[Stop] = []
    live: dict[str, list[Replica]] = defaultdict(list)
    for r in snapshot.replicas:
        deployment = wanted.get(r.deployment)
        i = table.index.get(r.node)
        if deployment is None:
            stops.append(Stop(r.id, r.deployment, r.node, "deployment deleted"))
        elif i is None or not table.ready[i]:
            stops.append(Stop(r.id, r.deployment, r.node, f"node {r.node} lost"))
        elif r.state == "failed":
            stops.append(Stop(r.id, r.deployment, r.node, "failed"))
        elif r.generation == deployment.generation:
            live[r.deployment].append(r)
    for name, replicas in live.items():
        surplus = len(replicas) - wanted[name].replicas
        if surplus <= 0:
            continue
        per_node = Counter(r.node for r in replicas)
        # not ready yet first, then from the nodes holding most of it, the busiest first
        replicas.sort(key=lambda r: (r.state in ("ready", "running"), -per_node[r.node],
                                     -table.load[table.index[r.node]], r.id))
        for r in replicas[:surplus]:
            stops.append(Stop(r.id, r.deployment, r.node, f"scaled to {wanted[name].replicas}"))
        live[name] = replicas[surplus:]
    return stops, live


def _need(deployment: Deployment, replicas: list[Replica]) -> Resources:
    """A measured replica that used more than the estimate corrects it for the next."""
    measured = max((r.rss for r in replicas), default=0)
    r = deployment.resources
    return Resources(cpu=r.cpu, memory=max(r.memory, measured), gpus=r.gpus)


def _problem(snapshot: ClusterSnapshot, table: NodeTable,
             live: dict[str, list[Replica]]) -> Problem:
    todo: list[tuple[Deployment, int, Resources]] = []
    for deployment in snapshot.deployments:
        have = live.get(deployment.name, [])
        pending = max(deployment.replicas - len(have), 0)
        if deployment.max_new is not None:
            pending = min(pending, max(deployment.max_new, 0))
        if pending:
            todo.append((deployment, pending, _need(deployment, have)))
    todo.sort(key=lambda t: (-t[0].priority, -t[2].memory, -t[2].cpu, t[0].name))

    n_dep, n_nodes = len(todo), len(table.nodes)
    free = table.free
    existing = np.zeros((n_dep, n_nodes), dtype=np.int64)
    ok = np.zeros((n_dep, n_nodes), dtype=bool)
    score = np.zeros((n_dep, n_nodes), dtype=np.float64)
    need = np.zeros((n_dep, 3), dtype=np.float64)
    for d, (deployment, _, resources) in enumerate(todo):
        for r in live.get(deployment.name, []):
            existing[d, table.index[r.node]] += 1
        need[d] = vector(resources)
        fit = Fit(table, deployment, need[d], free, existing[d])
        ok[d] = static_mask(fit)
        score[d] = weighted(fit, deployment.strategy)
    return Problem(
        table=table, deployments=[t[0] for t in todo],
        pending=np.array([t[1] for t in todo], dtype=np.int64), need=need, free=free,
        ok=ok, score=score, existing=existing,
        penalty=np.array([SPREAD_PENALTY[t[0].strategy] for t in todo], dtype=np.float64),
        anti=np.array([t[0].anti_affinity for t in todo], dtype=bool),
        weight=np.array([1.0 + max(t[0].priority, 0) for t in todo], dtype=np.float64))


def _unschedulable(problem: Problem, counts: np.ndarray, live: dict[str, list[Replica]]
                   ) -> list[Unschedulable]:
    out: list[Unschedulable] = []
    free_after = problem.free - counts.T @ problem.need
    index = problem.table.index
    for d, deployment in enumerate(problem.deployments):
        placed, pending = int(counts[d].sum()), int(problem.pending[d])
        if placed >= pending:
            continue
        holders: dict[int, list[str]] = defaultdict(list)
        for r in live.get(deployment.name, []):
            holders[index[r.node]].append(r.id)
        fit = Fit(problem.table, deployment, problem.need[d], free_after,
                  problem.existing[d] + counts[d], holders)
        kinds, words = reasons(fit, FILTERS)
        fitting = len(problem.table.nodes) - sum(kinds.values())
        summary = f"{fitting}/{len(problem.table.nodes)} nodes fit"
        if kinds:
            summary += ": " + ", ".join(f"{count} {kind}" for kind, count in
                                        sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
        if placed:
            summary = f"placed {placed} of {pending}; {summary}"
        if fitting:
            summary += f"; the solver left {pending - placed} unplaced within its time limit"
        out.append(Unschedulable(deployment.name, pending - placed, summary, words))
    return out
