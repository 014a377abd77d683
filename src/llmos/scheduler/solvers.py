"""Two solvers of one problem: place each deployment's pending replicas on nodes.

The problem is an assignment over the replica x node graph. An edge exists where
every static filter passes; a node takes as many replicas as its free resources
allow (and one at most under anti-affinity). A placement is worth ``PLACE_WEIGHT x
(1 + priority)`` plus the node's score, minus the spread penalty for the replicas of
the same deployment already there (the k-th replica on a node costs k x penalty).

``exact`` solves it as a MILP (scipy's HiGHS) with a time limit; ``greedy`` places
replica by replica, highest priority and largest first, each on the node of greatest
marginal value, which is the same objective taken one step at a time. Both answer
with replica counts per (deployment, node), valued by the one ``objective``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from llmos.scheduler.model import PLACE_WEIGHT, Deployment, Objective
from llmos.scheduler.table import Bools, Floats, Ints, NodeTable


@dataclass
class Problem:
    table: NodeTable
    deployments: list[Deployment]
    """Those with replicas to place, in the order greedy places them."""
    pending: Ints
    """(D,) replicas to place."""
    need: Floats
    """(D, 3) what one replica of each needs."""
    free: Floats
    """(N, 3) what each node has left before this plan."""
    ok: Bools
    """(D, N) the static filters' verdict."""
    score: Floats
    """(D, N) weighted scores in [0, 1]."""
    existing: Ints
    """(D, N) replicas of the deployment already on the node."""
    penalty: Floats
    """(D,) spread penalty per replica already on a node."""
    anti: Bools
    """(D,) at most one replica per node."""
    weight: Floats
    """(D,) 1 + priority."""

    def capacity_for(self, d: int) -> Ints:
        """(N,) how many replicas of ``d`` each node could take on its own."""
        need = self.need[d]
        room = np.full(len(self.table.nodes), np.iinfo(np.int64).max // 4, dtype=np.int64)
        for col in range(need.shape[0]):
            if need[col] > 0:
                room = np.minimum(room, np.floor(self.free[:, col] / need[col] + 1e-9)
                                  .astype(np.int64))
        room = np.minimum(room, int(self.pending[d]))
        if self.anti[d]:
            room = np.minimum(room, (self.existing[d] == 0).astype(np.int64))
        out: Ints = np.where(self.ok[d], np.maximum(room, 0), 0)
        return out


def objective(problem: Problem, counts: Ints) -> Objective:
    d, n = np.nonzero(counts)
    c = counts[d, n].astype(np.float64)
    placed = float((c * problem.weight[d]).sum())
    spread = c * problem.existing[d, n] + c * (c - 1) / 2
    score = float((c * problem.score[d, n]).sum() - (problem.penalty[d] * spread).sum())
    return Objective(placed=placed, score=score)


def greedy(problem: Problem) -> Ints:
    """Greedy in the problem's order (priority, then size), each replica on the node of
    greatest marginal value. When that leaves replicas out, more passes pack instead:
    each replica on the node whose free CPU and memory it matches best (so CPU-heavy
    replicas go where CPU is left, and no node is left with memory nobody can use for
    want of cores), in several orders (largest, smallest, fewest candidate nodes or most
    weight per size first), and the plain passes in other orders; the best objective
    wins (``improve.ruin_recreate`` then works on it)."""
    first = _greedy_pass(problem, range(len(problem.deployments)), problem.score,
                         problem.penalty)
    if int(first.sum()) >= int(problem.pending.sum()):
        return first
    if problem.ok.size > PORTFOLIO_LIMIT:
        _make_room(problem, first, problem.free - first.T @ problem.need)
        return first
    share = (problem.need[:, :2] / np.maximum(problem.free[:, :2].mean(axis=0), 1e-9)
             ).max(axis=1)
    size = (problem.need[:, :2] / np.maximum(problem.free[:, :2].sum(axis=0), 1e-9)
            ).sum(axis=1)
    density = problem.weight / np.maximum(size, 1e-12)
    candidates = problem.ok.sum(axis=1) / np.maximum(problem.pending, 1)
    bestfit = np.broadcast_to(
        1.0 - problem.free[None, :, 1] / np.maximum(problem.free[:, 1].max(), 1.0),
        problem.score.shape)
    flat = np.zeros_like(problem.penalty)
    largest = np.lexsort((-share, -problem.weight))
    smallest = np.lexsort((share, -problem.weight))
    scarce = np.lexsort((-share, candidates, -problem.weight))
    passes = [(order, problem.score, flat, True)
              for order in (largest, np.lexsort((-density, candidates)), scarce, smallest)]
    passes += [(largest, bestfit, flat, False), (smallest, problem.score, problem.penalty,
                                                 False),
               (scarce, problem.score, problem.penalty, False)]
    results = [first]
    work = PORTFOLIO_WORK
    for order, score, penalty, align in passes:
        work -= int(problem.pending.sum())
        if work < 0:
            break
        results.append(_greedy_pass(problem, order, score, penalty, align=align))
    best = max(results, key=lambda c: objective(problem, c).total)
    _make_room(problem, best, problem.free - best.T @ problem.need)
    return best


def _greedy_pass(problem: Problem, order: Iterable[int], score: Floats,
                 penalty: Floats, *, align: bool = False) -> Ints:
    """Each deployment in ``order`` places its replicas one at a time on the node of
    greatest gain: its score less the spread penalty or, with ``align``, how well the
    replica's need matches the node's free resources (the cosine of the two, as shares
    of the node), the score breaking ties."""
    counts = np.zeros_like(problem.existing)
    free = problem.free.copy()
    capacity = np.maximum(problem.table.capacity[:, :2], 1e-9)
    for d in order:
        nodes = np.flatnonzero(problem.ok[d])
        if nodes.size == 0 or problem.pending[d] <= 0:
            continue
        need = problem.need[d]
        used_cols = np.flatnonzero(need > 0)
        left = free[nodes]  # (k, 3), a copy
        here = problem.existing[d, nodes].astype(np.float64)
        fits: Bools = (left[:, used_cols] >= need[used_cols] - 1e-9).all(axis=1)
        if problem.anti[d]:
            fits &= here == 0
        cap = capacity[nodes]
        if align:
            gain = _alignment(need[:2] / cap, left[:, :2] / cap) + 1e-3 * score[d, nodes]
        else:
            gain = score[d, nodes] - penalty[d] * here
        gain = np.where(fits, gain, -np.inf)
        placed = np.zeros(nodes.size, dtype=np.int64)
        for _ in range(int(problem.pending[d])):
            j = int(np.argmax(gain))
            if gain[j] == -np.inf:
                break
            placed[j] += 1
            left[j] -= need
            here[j] += 1
            if problem.anti[d] or not bool((left[j, used_cols] >= need[used_cols] - 1e-9)
                                           .all()):
                gain[j] = -np.inf
            elif align:
                a0, a1 = need[0] / cap[j, 0], need[1] / cap[j, 1]
                b0, b1 = left[j, 0] / cap[j, 0], left[j, 1] / cap[j, 1]
                norm = math.hypot(a0, a1) * math.hypot(b0, b1)
                gain[j] = ((a0 * b0 + a1 * b1) / norm if norm > 1e-12 else 0.0) + 1e-3 * score[
                    d, nodes[j]]
            else:
                gain[j] -= penalty[d]
        free[nodes] = left
        counts[d, nodes] = placed
    return counts


def _alignment(need: Floats, free: Floats) -> Floats:
    """Row-wise cosine of what a replica needs and what a node has free."""
    norms = np.linalg.norm(need, axis=1) * np.linalg.norm(free, axis=1)
    out: Floats = (need * free).sum(axis=1) / np.maximum(norms, 1e-12)
    return out


PORTFOLIO_LIMIT = 250_000
"""The extra greedy passes run when deployments x nodes is at most this (each pass costs
about as much as the first)..."""
PORTFOLIO_WORK = 15_000
"""... and as many of them as place this many replicas in all (in the order listed, the
most useful first): every pass on a small cluster, one for 10,000 replicas."""


REPAIR_BUDGET = 2_000
"""Node visits the repair may make in all, each O(deployments + nodes)..."""
REPAIR_WORK = 400_000
"""... and no more than this over (deployments + nodes): a bound on its time on a large
cluster (360 visits on 1,000 nodes)."""


def _fits(problem: Problem, d: int, free: Floats, counts: Ints) -> Bools:
    need = problem.need[d]
    ok: Bools = problem.ok[d] & (free >= need - 1e-9).all(axis=1)
    if problem.anti[d]:
        ok &= (problem.existing[d] + counts[d]) == 0
    return ok


REPAIR_DEPTH = 2
"""How deep a chain of moves the repair tries: a replica moved to make room may itself
need room made for it on its new node, and so on."""
REPAIR_WIDTH = 6
"""Nodes tried for each replica a chain moves, best first."""

Move = tuple[int, int, int]


def _make_room(problem: Problem, counts: Ints, free: Floats) -> None:
    """For each replica greedy left out, try its candidate nodes best first: move
    replicas this plan put there (largest first) to other nodes, making room for them
    there too if need be (chains of up to ``REPAIR_DEPTH`` moves), until it fits, or
    undo the moves. Greedy's order can take the only nodes a constrained deployment
    could use; each success places one more replica."""
    budget = [min(REPAIR_BUDGET, REPAIR_WORK // max(len(problem.deployments)
                                                    + len(problem.table.nodes), 1))]
    moves: list[Move] = []
    for d in range(len(problem.deployments)):
        while counts[d].sum() < problem.pending[d] and budget[0] > 0:
            # only nodes that had room before this plan, and hold some of its replicas
            allowed = (problem.ok[d] & (problem.free >= problem.need[d] - 1e-9).all(axis=1)
                       & counts.any(axis=0))
            if problem.anti[d]:
                allowed &= (problem.existing[d] + counts[d]) == 0
            nodes = np.flatnonzero(allowed)
            placed = False
            for n in nodes[np.argsort(-problem.score[d, nodes])]:
                budget[0] -= 1
                if budget[0] <= 0:
                    break
                mark = len(moves)
                if _room_on(problem, counts, free, int(d), int(n), REPAIR_DEPTH,
                            {int(n)}, moves, budget):
                    counts[d, n] += 1
                    free[n] -= problem.need[d]
                    placed = True
                    break
                _undo(problem, counts, free, moves, mark)
            if not placed:
                break


def _fits_on(problem: Problem, free: Floats, d: int, n: int) -> bool:
    return bool((free[n] >= problem.need[d] - 1e-9).all())


def _room_on(problem: Problem, counts: Ints, free: Floats, d: int, n: int, depth: int,
             chain: set[int], moves: list[Move], budget: list[int]) -> bool:
    """Move this plan's replicas off ``n`` until one of ``d`` fits there (the moves are
    logged; the caller undoes them if this fails)."""
    need = problem.need[d]
    others = [int(e) for e in np.flatnonzero(counts[:, n]) if e != d]
    others.sort(key=lambda e: -float(problem.need[e, :2].sum()))
    for e in others:
        while counts[e, n] > 0 and not _fits_on(problem, free, d, n):
            if not bool((problem.need[e] > 1e-9)[need - free[n] > 1e-9].any()):
                break  # moving e frees nothing that is short
            m = _room_elsewhere(problem, counts, free, e, depth, chain | {n}, moves, budget)
            if m is None:
                break
            _move(problem, counts, free, e, n, m)
            moves.append((e, n, m))
    return _fits_on(problem, free, d, n)


def _room_elsewhere(problem: Problem, counts: Ints, free: Floats, e: int, depth: int,
                    chain: set[int], moves: list[Move], budget: list[int]) -> int | None:
    """A node outside ``chain`` for one more replica of ``e``: one with room, or (depth
    allowing) one where room can be made."""
    room = _fits(problem, e, free, counts)
    room[list(chain)] = False
    gain = problem.score[e] - problem.penalty[e] * (problem.existing[e] + counts[e])
    if room.any():
        return int(np.argmax(np.where(room, gain, -np.inf)))
    if depth <= 1:
        return None
    candidates = problem.ok[e] & (problem.free >= problem.need[e] - 1e-9).all(axis=1)
    if problem.anti[e]:
        candidates &= (problem.existing[e] + counts[e]) == 0
    candidates[list(chain)] = False
    order = np.flatnonzero(candidates)
    for m in order[np.argsort(-gain[order])][:REPAIR_WIDTH]:
        budget[0] -= 1
        if budget[0] <= 0:
            return None
        mark = len(moves)
        if _room_on(problem, counts, free, e, int(m), depth - 1, chain | {int(m)}, moves,
                    budget):
            return int(m)
        _undo(problem, counts, free, moves, mark)
    return None


def _undo(problem: Problem, counts: Ints, free: Floats, moves: list[Move], mark: int) -> None:
    while len(moves) > mark:
        e, src, dst = moves.pop()
        _move(problem, counts, free, e, dst, src)


def _move(problem: Problem, counts: Ints, free: Floats, e: int, src: int, dst: int) -> None:
    counts[e, src] -= 1
    counts[e, dst] += 1
    free[src] += problem.need[e]
    free[dst] -= problem.need[e]


@dataclass(frozen=True)
class Exact:
    counts: Ints
    optimal: bool


def exact_size(problem: Problem) -> int:
    """How many binary variables the MILP would have."""
    return int(sum(int(problem.capacity_for(d).sum())
                   for d in range(len(problem.deployments))))


def exact(problem: Problem, *, time_limit_s: float = 2.0) -> Exact | None:
    """The MILP; None when it found no solution in time (the caller goes greedy)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    n_nodes = len(problem.table.nodes)
    var_d: list[int] = []
    var_n: list[int] = []
    value: list[float] = []
    for d in range(len(problem.deployments)):
        room = problem.capacity_for(d)
        for n in np.flatnonzero(room):
            base = problem.weight[d] * PLACE_WEIGHT + problem.score[d, n]
            for k in range(int(room[n])):
                var_d.append(d)
                var_n.append(int(n))
                value.append(base - problem.penalty[d] * (problem.existing[d, n] + k))
    if not value:
        return Exact(np.zeros_like(problem.existing), True)
    n_vars = len(value)
    vd, vn = np.array(var_d), np.array(var_n)
    rows, cols, data, upper = [], [], [], []
    # each deployment places at most what it has pending
    rows.append(vd)
    cols.append(np.arange(n_vars))
    data.append(np.ones(n_vars))
    upper.append(problem.pending.astype(np.float64))
    offset = len(problem.deployments)
    # each node's free resources cover what is placed on it
    for col in range(problem.need.shape[1]):
        need = problem.need[vd, col]
        used = need > 0
        rows.append(offset + vn[used])
        cols.append(np.flatnonzero(used))
        data.append(need[used])
        upper.append(problem.free[:, col])
        offset += n_nodes
    matrix = coo_array((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(offset, n_vars)).tocsr()
    result = milp(c=-np.array(value), integrality=np.ones(n_vars),
                  bounds=Bounds(0, 1),
                  constraints=LinearConstraint(matrix, -np.inf, np.concatenate(upper)),
                  options={"time_limit": time_limit_s, "mip_rel_gap": 1e-9})
    if result.x is None:
        return None
    chosen = np.round(result.x).astype(bool)
    counts = np.zeros_like(problem.existing)
    np.add.at(counts, (vd[chosen], vn[chosen]), 1)
    return Exact(counts, bool(result.status == 0))
