"""Seeded synthetic clusters, the one mix the scheduler's tests and benchmark share.

Small mixed nodes (2, 4 or 8 cores; 4, 8 or 16 GiB; zone ``a`` or ``b``; a random live
load; three in ten holding ``m0@1``) and deployments of 1-6 replicas (0.5-2 cores and
0.5-5 GiB a replica; spread or binpack; one in five with anti-affinity, one in five
pinned to zone ``a``; priority 1 for one in three), until they ask for ``replicas`` in
all or, with ``fill``, for that share of the cluster's memory.
"""

from __future__ import annotations

import random

from llmos.scheduler.model import ClusterSnapshot, Deployment, GiB, Node, Resources


def mixed_cluster(nodes: int, *, seed: int, replicas: int | None = None,
                  fill: float | None = None) -> ClusterSnapshot:
    if (replicas is None) == (fill is None):
        raise ValueError("give replicas or fill")
    rng = random.Random(seed)
    node_list = tuple(Node(f"n{i}", Resources(cpu=rng.choice([2, 4, 8]),
                                              memory=rng.choice([4, 8, 16]) * GiB),
                           labels={"zone": rng.choice("ab")}, load=rng.random(),
                           cached=frozenset({"m0@1"} if rng.random() < 0.3 else ()))
                      for i in range(nodes))
    memory_left = (fill or 0.0) * sum(n.capacity.memory for n in node_list)
    replicas_left = replicas or 0
    deployments: list[Deployment] = []
    while (replicas_left if fill is None else memory_left) > 0:
        d = len(deployments)
        if fill is None:
            count = min(replicas_left, rng.randint(1, 6))
            cpu, memory = rng.choice([0.5, 1, 2]), int(rng.uniform(0.5, 5) * GiB)
        else:
            memory = int(rng.uniform(0.5, 5) * GiB)
            count = max(1, min(rng.randint(1, 6), int(memory_left // memory)))
            cpu = rng.choice([0.5, 1, 2])
        replicas_left -= count
        memory_left -= count * memory
        deployments.append(Deployment(
            f"d{d}", f"m{d % 3}@1", count, Resources(cpu=cpu, memory=memory),
            strategy=rng.choice(["spread", "binpack"]), anti_affinity=rng.random() < 0.2,
            priority=rng.choice([0, 0, 1]),
            node_selector={"zone": "a"} if rng.random() < 0.2 else {}))
    return ClusterSnapshot(node_list, tuple(deployments))
