"""A node heeds one cluster's orders: two control planes with their own stores on one
bus never stop each other's replicas; it reports at once when a controller starts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from llmos.agent.capacity import Capacity
from llmos.agent.node import NodeAgent
from llmos.agent.runner import Notify
from llmos.bus import TopicMessage
from llmos.bus.memory import MemoryBus
from llmos.bus.messages import Assignment, ReplicaSpec, ReplicaStatus, encode
from llmos.controller.reconcile import Controller
from llmos.registry.defaults import open_registry
from llmos.settings import Settings
from llmos.store import Store
from tests.waiting import eventually


class Replicas:
    """A runner that only keeps the list of what it runs."""

    def __init__(self) -> None:
        self.on_change: Notify | None = None
        self.ids: set[str] = set()

    async def start(self, spec: ReplicaSpec) -> None:
        self.ids.add(spec.replica_id)

    async def stop(self, replica_id: str) -> None:
        self.ids.discard(replica_id)

    def running(self) -> set[str]:
        return set(self.ids)

    def statuses(self) -> list[ReplicaStatus]:
        return []

    def cached(self) -> list[str]:
        return []

    async def close(self) -> None:
        pass


def order(cluster: str, term: int, *replicas: str) -> TopicMessage:
    return TopicMessage(encode(Assignment(
        node="n1", term=term, issued_at=time.time(), cluster=cluster,
        replicas=[ReplicaSpec(replica_id=r, deployment="d", model="m@1") for r in replicas])))


async def settle(agent: NodeAgent) -> None:
    for task in list(agent._stopping.values()):
        await task


@pytest.mark.asyncio
async def test_a_node_heeds_the_first_cluster_it_hears_and_ignores_another(
        bus: MemoryBus) -> None:
    runner = Replicas()
    agent = NodeAgent(bus, "n1", runner, Capacity(cpus=2, memory=1 << 30))
    await agent._on_assignment(order("aaa", 3, "r1"))
    assert runner.ids == {"r1"} and agent.cluster == "aaa"
    assert agent.status().cluster == "aaa"  # (its heartbeat says whose it is)
    # Another control plane (its own store, its own terms) orders nothing here: ignored.
    await agent._on_assignment(order("bbb", 9, "r9"))
    await agent._on_assignment(order("bbb", 9))
    await settle(agent)
    assert runner.ids == {"r1"} and agent.term == 3
    # Its own cluster's next order still counts, and so does one from before cluster ids.
    await agent._on_assignment(order("aaa", 3, "r2"))
    await settle(agent)
    assert runner.ids == {"r2"}
    await agent._on_assignment(order("", 3, "r2", "r3"))
    assert runner.ids == {"r2", "r3"} and agent.cluster == "aaa"


@pytest.mark.asyncio
async def test_a_node_started_for_a_cluster_never_heeds_another(bus: MemoryBus) -> None:
    runner = Replicas()
    agent = NodeAgent(bus, "n1", runner, Capacity(cpus=2, memory=1 << 30), cluster="aaa")
    await agent._on_assignment(order("bbb", 1, "r9"))
    assert runner.ids == set() and agent.cluster == "aaa"
    await agent._on_assignment(order("aaa", 1, "r1"))
    assert runner.ids == {"r1"}


@pytest.mark.asyncio
async def test_a_controller_that_starts_hears_every_node_at_once(
        bus: MemoryBus, tmp_path: Path) -> None:
    """A node reports every minute here; a controller started after its report hears it
    within moments all the same (its roll call), so it can act at once, not by the
    node's next status."""
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    agent = NodeAgent(bus, "n1", Replicas(), Capacity(cpus=2, memory=1 << 30),
                      interval_s=60)
    await agent.start()
    controller = Controller(store, open_registry(settings), bus, settings.engine)
    try:
        await asyncio.sleep(0.1)  # (its first status is gone by the time the controller starts)
        await controller.start()
        started = time.monotonic()
        await eventually(lambda: [h.status.node for h in controller.directory.all()] == ["n1"],
                         timeout_s=0.5, what="the node heard")
        assert time.monotonic() - started < 0.5
    finally:
        await controller.stop()
        await agent.stop()
        store.close()
