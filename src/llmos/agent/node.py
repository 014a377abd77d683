"""The node agent: heartbeats what its node has and runs, and carries out assignments.

The same class runs inside ``llmos serve`` (one node, replicas in-process) and as
``llmos agent`` (replicas as ``llmos worker`` processes). An assignment lists every
replica the node should run: the agent starts what is missing and drains what is not
listed, so a lost or repeated message changes nothing, and an agent that comes back
after it was declared lost stops what was placed elsewhere meanwhile. An assignment
of an older controller term than one already seen is ignored.

A node heeds one cluster: the one it was started with (``llmos serve``: its own
store's; ``llmos agent`` with a join token: the one it joined), or else the first whose
assignment it hears. Assignments of another cluster (a control plane with a store of
its own on the same bus) are ignored with a warning, so two such control planes never
stop each other's replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from llmos.agent.capacity import Capacity, cpu_load
from llmos.agent.runner import Runner
from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.beacon import Beacon, calls
from llmos.bus.messages import Assignment, Command, NodeStatus, decode_or_ignore

log = logging.getLogger(__name__)


class NodeAgent:
    def __init__(self, bus: Bus, name: str, runner: Runner, capacity: Capacity, *,
                 labels: dict[str, str] | None = None,
                 interval_s: float = names.NODE_INTERVAL_S, cluster: str | None = None
                 ) -> None:
        self.bus = bus
        self.name = name
        self.runner = runner
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.interval_s = interval_s
        self.epoch = uuid.uuid4().hex[:12]
        self.term = 0
        self.cluster = cluster or ""
        """The cluster whose assignments this node heeds ("": the first it hears)."""
        self._foreign: set[str] = set()
        self._subscriptions: list[Subscription] = []
        self._beacon = Beacon(bus, names.NODE_STATUS_TOPIC, self.status, interval_s,
                              name=f"agent-{name}")
        self._stopping: dict[str, asyncio.Task[None]] = {}
        runner.on_change = self._beacon.send_soon  # a replica changed: say so now

    async def start(self) -> None:
        self._subscriptions = [
            await self.bus.subscribe(names.ASSIGNMENT_TOPIC, self._on_assignment),
            await self.bus.subscribe(names.COMMAND_TOPIC, self._on_command)]
        cpu_load()  # the first reading starts the interval
        self._beacon.start()
        log.info("agent of node %s started (%g CPUs, %d MiB), heeding cluster %s", self.name,
                 self.capacity.cpus, self.capacity.memory >> 20,
                 self.cluster or "(the first whose assignment comes)")

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
        await self._beacon.stop()
        await self.runner.close()

    def status(self) -> NodeStatus:
        return NodeStatus(
            node=self.name, epoch=self.epoch, labels=self.labels, cpus=self.capacity.cpus,
            memory=self.capacity.memory, gpus=self.capacity.gpus, load=cpu_load(),
            cached=self.runner.cached(), replicas=self.runner.statuses(),
            sent_at=time.time(), interval_s=self.interval_s, cluster=self.cluster)

    async def send_status(self) -> None:
        await self._beacon.send()

    async def _on_command(self, message: TopicMessage) -> None:
        """A roll call (a controller that has just started asks who is there): a status
        now. (The other commands are for workers.)"""
        command = decode_or_ignore(Command, message.body)
        if command is not None and calls(command, self.name):
            self._beacon.answer()

    async def _on_assignment(self, message: TopicMessage) -> None:
        assignment = decode_or_ignore(Assignment, message.body)
        if assignment is None or assignment.node != self.name:
            return
        if not self._heeds(assignment.cluster):
            return
        if assignment.term < self.term:
            log.warning("ignored an assignment of controller term %d (term %d seen)",
                        assignment.term, self.term)
            return
        self.term = assignment.term
        await self.apply(assignment)

    def _heeds(self, cluster: str) -> bool:
        """Whether this node takes orders from ``cluster`` (adopting the first it hears;
        "" is a control plane from before cluster ids, heeded as before)."""
        if not cluster or cluster == self.cluster:
            return True
        if not self.cluster:
            self.cluster = cluster
            log.info("node %s heeds cluster %s", self.name, cluster)
            return True
        if cluster not in self._foreign:
            self._foreign.add(cluster)
            log.warning("node %s ignores the assignments of cluster %s: it heeds cluster %s "
                        "(another control plane with its own store shares this bus; restart "
                        "the agent to follow another)", self.name, cluster, self.cluster)
        return False

    async def apply(self, assignment: Assignment) -> None:
        wanted = {spec.replica_id: spec for spec in assignment.replicas}
        running = self.runner.running()
        changed = False
        for replica_id in running - wanted.keys():
            if replica_id not in self._stopping:
                log.info("stopping replica %s: not assigned to %s", replica_id, self.name)
                self._stopping[replica_id] = asyncio.create_task(
                    self._stop(replica_id), name=f"stop-{replica_id}")
                changed = True
        for replica_id, spec in wanted.items():
            if replica_id not in running and replica_id not in self._stopping:
                log.info("starting replica %s of %s (%s)", replica_id, spec.deployment,
                         spec.model)
                await self.runner.start(spec)
                changed = True
        if changed:
            await self.send_status()

    async def _stop(self, replica_id: str) -> None:
        try:
            await self.runner.stop(replica_id)
        finally:
            self._stopping.pop(replica_id, None)
