"""Ruin and recreate: improve a placement that left replicas out.

After greedy, a round picks a deployment with replicas still out, a node it may use
and a few related nodes, takes back the replicas this plan put on them, and packs
those again together with the outstanding replicas that may go there: highest
priority first, each replica on the node whose free CPU and memory it matches best.
A round that places less weight is undone; one that places as much or more is kept,
so the search walks across equal plans, and the best plan seen (weight, then score)
is the answer. Packing a few nodes afresh finds what moving one replica at a time
cannot: two small replicas where one large one was, or a CPU-heavy replica swapped
with a memory-heavy one across nodes. (Schrimpf et al., "Record breaking optimization
results using the ruin and recreate principle", J. Comput. Phys. 159, 2000; Shaw,
"Using constraint programming and local search methods to solve vehicle routing
problems", CP 1998, for choosing related parts to ruin.)

Pure and repeatable: the rounds draw from a generator seeded by the problem's shape, so
one snapshot gives one plan; the number of rounds bounds the time (no clock).
"""

from __future__ import annotations

import math

import numpy as np

from llmos.scheduler.solvers import Problem
from llmos.scheduler.table import Bools, Floats, Ints

ROUNDS = 400
"""Rounds at most (a fraction of a millisecond each on a small cluster)..."""
WORK = 100_000
"""... and no more than this over (deployments + nodes), which is what a round's array
work grows with: 90 rounds on a cluster of 1,000 nodes."""
WIDTH = 4
"""Nodes emptied and packed again per round."""


def ruin_recreate(problem: Problem, counts: Ints, *, rounds: int = ROUNDS,
                  width: int = WIDTH) -> None:
    """Improve ``counts`` in place; stops early once nothing that could fit is out."""
    rng = np.random.default_rng([len(problem.deployments), len(problem.table.nodes),
                                 int(problem.pending.sum())])
    free = problem.free - counts.T @ problem.need
    capacity = np.maximum(problem.table.capacity[:, :2], 1e-9)
    share = (problem.need[:, :2] / np.maximum(problem.free[:, :2].mean(axis=0), 1e-9)
             ).max(axis=1)
    reachable = problem.ok.any(axis=1)
    out = problem.pending - counts.sum(axis=1)
    value = best = (0.0, 0.0)  # relative to the plan as it came in
    since_best: list[tuple[Ints, Ints]] = []  # (nodes, their columns before) to undo
    for _ in range(min(rounds, WORK // max(len(problem.deployments)
                                          + len(problem.table.nodes), 1))):
        short = np.flatnonzero((out > 0) & reachable)
        if short.size == 0:
            break
        d = int(rng.choice(short))
        nodes = _nodes(problem, counts, free, d, width, rng)
        removed = counts[:, nodes]
        pool = removed.sum(axis=1) + np.where(problem.ok[:, nodes].any(axis=1), out, 0)
        members = np.flatnonzero(pool)
        order = _order(int(rng.integers(3)), members, problem.weight, share, rng)
        packed = _pack(problem, nodes, members[order], pool, free[nodes] + removed.T
                       @ problem.need, capacity[nodes])
        before, after = _value(problem, nodes, removed), _value(problem, nodes, packed)
        if after[0] < before[0] - 1e-9:
            continue
        counts[:, nodes] = packed
        free[nodes] = problem.free[nodes] - packed.T @ problem.need
        out += removed.sum(axis=1) - packed.sum(axis=1)
        since_best.append((nodes, removed))
        value = (value[0] + after[0] - before[0], value[1] + after[1] - before[1])
        if value > best:
            best = value
            since_best.clear()
    for nodes, columns in reversed(since_best):
        counts[:, nodes] = columns


def _nodes(problem: Problem, counts: Ints, free: Floats, d: int, width: int,
           rng: np.random.Generator) -> Ints:
    """A node ``d`` may use, and ``width - 1`` related ones: nodes where what the first
    holds may go, the roomier the likelier (Shaw's related removal), so the first can
    be emptied onto them, even onto nodes ``d`` itself may not use."""
    first = int(rng.choice(np.flatnonzero(problem.ok[d])))
    holders = np.flatnonzero(counts[:, first])
    related: Bools = np.asarray(problem.ok[holders].any(axis=0) if holders.size
                                else problem.ok[d], dtype=bool).copy()
    related[first] = False
    candidates = np.flatnonzero(related)
    if candidates.size == 0:
        return np.array([first])
    room = (free[candidates, :2] / np.maximum(problem.table.capacity[candidates, :2], 1e-9)
            ).clip(0.0).sum(axis=1) + 0.05
    others = rng.choice(candidates, size=min(width - 1, candidates.size), replace=False,
                        p=room / room.sum())
    out: Ints = np.concatenate(([first], others))
    return out


def _order(mode: int, members: Ints, weight: np.ndarray, share: np.ndarray,
           rng: np.random.Generator) -> Ints:
    """Priority first always; within it largest first, at random, or most weight per
    size first (the rounds vary it, so one order's blind spot is another's chance)."""
    w, s = weight[members], share[members]
    if mode == 0:
        out: Ints = np.lexsort((-s, -w))
    elif mode == 1:
        out = np.lexsort((rng.random(members.size), -w))
    else:
        out = np.argsort(-w / np.maximum(s, 1e-9), kind="stable")
    return out


def _pack(problem: Problem, nodes: Ints, members: Ints, pool: Ints, free: np.ndarray,
          capacity: np.ndarray) -> Ints:
    """Pack ``pool`` replicas of each member onto ``nodes`` (plain Python: a handful of
    nodes, where numpy's per-call cost would dominate)."""
    k = len(nodes)
    room = free.tolist()
    cap = capacity.tolist()
    packed = np.zeros((problem.need.shape[0], k), dtype=np.int64)
    for e in members.tolist():
        need = problem.need[e].tolist()
        ok = problem.ok[e, nodes].tolist()
        alone = (problem.existing[e, nodes] == 0).tolist() if problem.anti[e] else None
        for _ in range(int(pool[e])):
            best, best_key = -1, -math.inf
            for j in range(k):
                r = room[j]
                if not ok[j] or any(r[c] < need[c] - 1e-9 for c in range(3)):
                    continue
                if alone is not None and (not alone[j] or packed[e, j]):
                    continue
                a0, a1 = need[0] / cap[j][0], need[1] / cap[j][1]
                b0, b1 = r[0] / cap[j][0], r[1] / cap[j][1]
                norm = math.hypot(a0, a1) * math.hypot(b0, b1)
                key = (a0 * b0 + a1 * b1) / norm if norm > 1e-12 else 0.0
                if key > best_key:
                    best, best_key = j, key
            if best < 0:
                break
            packed[e, best] += 1
            for c in range(3):
                room[best][c] -= need[c]
    return packed


def _value(problem: Problem, nodes: Ints, counts: Ints) -> tuple[float, float]:
    c = counts.astype(np.float64)
    weight = float((c.sum(axis=1) * problem.weight).sum())
    existing = problem.existing[:, nodes]
    spread = c * existing + c * (c - 1) / 2
    score = float((c * problem.score[:, nodes]).sum()
                  - (problem.penalty[:, None] * spread).sum())
    return weight, score
