"""Scheduler benchmark: how fast ``plan()`` places, and how close greedy comes to optimal.

The controller calls this same ``llmos.scheduler.plan.plan`` on every reconcile.

(a) Placement time, an empty cluster of N nodes asked for 10 x N replicas, N = 100,
    1,000, 10,000. The mix (seeded, the same every run):
    - nodes: 8/16/32/64 cores with 32/64/128/256 GiB (one of four at random), a
      zone label of four, 10 % labelled gpu=a100 with one GPU, 5 % cordoned,
      30 % holding some model version in their cache, a random live load;
    - deployments: N / 10 of them, 20-180 replicas each (10 x N in all), one of
      20 models, 0.5-6 GiB and 0.5-4 cores a replica; half spread, half binpack;
      10 % with anti-affinity (at most 50 replicas then), 10 % with a zone
      selector, 5 % needing the GPU label and a GPU, priorities 0-2.
    Reported: the median time of ``plan()`` over --runs, placements per second, and
    the replicas placed (some do not fit: GPU ones).
(b) Healing, the same clusters fully placed, then one node lost: the time to plan
    its replicas elsewhere (what the controller does after a node loss).
(c) Greedy against the MILP, on small clusters (12, 24 and 48 nodes) filled to
    50 %, 75 % and 95 % of their memory by the same kind of mix, 8 seeds each:
    the ratio of greedy's objective to the proved optimum (placements weighted by
    priority, then scores), the replicas each placed, and the MILP's time.

    .venv/bin/python benchmarks/scheduler.py [--runs 5] [--nodes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from llmos.scheduler.model import (  # noqa: E402
    ClusterSnapshot,
    Deployment,
    GiB,
    Node,
    Plan,
    Replica,
    Resources,
)
from llmos.scheduler.plan import plan  # noqa: E402
from llmos.scheduler.synthetic import mixed_cluster  # noqa: E402


def cluster(n_nodes: int, n_replicas: int, seed: int = 7) -> ClusterSnapshot:
    rng = random.Random(seed)
    nodes = []
    for i in range(n_nodes):
        size = rng.randrange(4)
        gpu = rng.random() < 0.1
        labels = {"zone": f"z{rng.randrange(4)}"}
        if gpu:
            labels["gpu"] = "a100"
        nodes.append(Node(
            f"node-{i}", Resources(cpu=8 * 2**size, memory=32 * 2**size * GiB,
                                   gpus=1 if gpu else 0),
            labels=labels, cordoned=rng.random() < 0.05, load=rng.random(),
            cached=frozenset({f"model-{rng.randrange(20)}@1"} if rng.random() < 0.3
                             else ())))
    deployments = []
    left, d = n_replicas, 0
    while left > 0:
        anti = rng.random() < 0.1
        gpu = rng.random() < 0.05
        count = min(left, rng.randint(20, 180), 50 if anti else left)
        left -= count
        deployments.append(Deployment(
            f"dep-{d}", f"model-{d % 20}@1", count,
            Resources(cpu=rng.choice([0.5, 1, 2, 4]),
                      memory=int(rng.uniform(0.5, 6) * GiB), gpus=1 if gpu else 0),
            strategy=rng.choice(["spread", "binpack"]), anti_affinity=anti,
            priority=rng.randrange(3),
            node_selector=({"gpu": "a100"} if gpu else
                           {"zone": "z1"} if rng.random() < 0.1 else {})))
        d += 1
    return ClusterSnapshot(tuple(nodes), tuple(deployments))


def placed_as_replicas(snapshot: ClusterSnapshot, p: Plan) -> ClusterSnapshot:
    replicas = tuple(Replica(f"r{i}", x.deployment, x.node, x.resources, state="ready")
                     for i, x in enumerate(p.placements))
    return replace(snapshot, replicas=replicas)


@contextmanager
def quiet_stdout() -> Any:
    """scipy's HiGHS prints a debug line to stdout on some solves; keep the table clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def timed(fn: Any, runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", default="100,1000,10000")
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, Any] = {"placement": [], "healing": [], "milp": []}

    print("(a) placement, empty cluster, 10 replicas per node (greedy; median of "
          f"{args.runs})")
    print(f"{'nodes':>7} {'replicas':>9} {'deployments':>12} {'placed':>8} "
          f"{'plan s':>8} {'placements/s':>13}")
    for n in (int(x) for x in args.nodes.split(",")):
        snap = cluster(n, 10 * n)
        runs = args.runs if n <= 1000 else max(1, args.runs // 2)
        seconds, p = timed(lambda snap=snap: plan(snap, solver="greedy"), runs)
        asked = sum(d.replicas for d in snap.deployments)
        row = {"nodes": n, "replicas": asked, "deployments": len(snap.deployments),
               "placed": len(p.placements), "seconds": seconds, "solver": p.solver,
               "per_s": len(p.placements) / seconds}
        results["placement"].append(row)
        print(f"{n:>7} {asked:>9} {len(snap.deployments):>12} {len(p.placements):>8} "
              f"{seconds:>8.3f} {row['per_s']:>13,.0f}")

        full = placed_as_replicas(snap, p)
        lost = full.replicas[0].node
        nodes = tuple(replace(x, ready=False) if x.name == lost else x for x in full.nodes)
        broken = replace(full, nodes=nodes)
        heal_s, healed = timed(lambda broken=broken: plan(broken), runs)
        moved = [x for x in healed.placements]
        results["healing"].append({"nodes": n, "replicas": len(full.replicas),
                                   "lost": len(healed.stops), "placed": len(moved),
                                   "seconds": heal_s, "solver": healed.solver})

    print("\n(b) healing: the same cluster placed, one node lost; plan its replicas again")
    print(f"{'nodes':>7} {'replicas':>9} {'lost':>6} {'placed':>7} {'solver':>7} "
          f"{'plan s':>8}")
    for row in results["healing"]:
        print(f"{row['nodes']:>7} {row['replicas']:>9} {row['lost']:>6} {row['placed']:>7} "
              f"{row['solver']:>7} {row['seconds']:>8.3f}")

    print(f"\n(c) greedy against the MILP (optimum proved), {args.seeds} seeds each")
    print(f"{'nodes':>6} {'fill':>5} {'replicas':>9} {'ratio min':>10} {'ratio med':>10} "
          f"{'placed g/m':>11} {'milp s':>7} {'greedy ms':>10} {'proved':>7}")
    for n in (12, 24, 48) if args.seeds else ():
        for fill in (0.5, 0.75, 0.95):
            ratios, placed_g, placed_m, t_m, t_g, proved, asked = [], 0, 0, [], [], 0, 0
            for seed in range(args.seeds):
                snap = mixed_cluster(n, seed=seed, fill=fill)
                asked += sum(d.replicas for d in snap.deployments)
                with quiet_stdout():
                    start = time.perf_counter()
                    exact = plan(snap, solver="milp", time_limit_s=10)
                    t_m.append(time.perf_counter() - start)
                start = time.perf_counter()
                quick = plan(snap, solver="greedy")
                t_g.append(time.perf_counter() - start)
                proved += exact.optimal
                ratios.append(quick.objective.total / exact.objective.total)
                placed_g += len(quick.placements)
                placed_m += len(exact.placements)
            row = {"nodes": n, "fill": fill, "replicas": asked, "ratio_min": min(ratios),
                   "ratio_median": statistics.median(ratios),
                   "placed_greedy": placed_g, "placed_milp": placed_m,
                   "milp_s_median": statistics.median(t_m),
                   "greedy_ms_median": 1000 * statistics.median(t_g),
                   "proved": proved, "seeds": args.seeds}
            results["milp"].append(row)
            print(f"{n:>6} {fill:>5.2f} {asked:>9} {row['ratio_min']:>10.4f} "
                  f"{row['ratio_median']:>10.4f} {placed_g:>5}/{placed_m:<5} "
                  f"{row['milp_s_median']:>7.2f} {row['greedy_ms_median']:>10.1f} "
                  f"{proved:>4}/{args.seeds}")

    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scheduler-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
