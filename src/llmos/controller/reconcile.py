"""The controller: desired state (deployments in the store) against actual state (what
agents report), reconciled through the scheduler.

Exactly one controller is active: the holder of the ``controller`` lease in the store.
Others stand by and take over within a lease's life when it stops renewing. Each pass:

1. learn: node statuses (heartbeats) -> replica states and RSS in the store, events;
2. decide: the scheduler's ``plan()`` on a snapshot of the cluster, plus rolling
   changes one replica at a time;
3. record: new replicas, stopped ones and the reasons, as rows and events;
4. order: every node gets an assignment, the full list of replicas it should run,
   carrying the lease term.

Nothing is kept only here: desired state is in the store and actual state is learned
again from heartbeats, so a controller that restarts (or another that takes over)
loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.beacon import roll_call
from llmos.bus.messages import (
    Assignment,
    NodeStatus,
    ReplicaSpec,
    RequestEvent,
    TrafficReport,
    decode_or_ignore,
    encode,
)
from llmos.controller.autoscaler import Autoscaler, bounds_of
from llmos.controller.estimates import Estimates
from llmos.controller.nodes import NodeDirectory
from llmos.controller.snapshot import LIVE_STATES, Rollout, resources_of, rollout, snapshot
from llmos.deployments import pin
from llmos.errors import BusError, LLMOSError
from llmos.registry.local import LocalRegistry
from llmos.scheduler import model as sched
from llmos.scheduler.plan import plan
from llmos.settings import EngineSettings
from llmos.store import Deployment, Store
from llmos.store.tables import Event, Node, Replica

log = logging.getLogger(__name__)

LEASE = "controller"
LEASE_TTL_S = 6.0
"""A standby takes over at most this long after the active controller last renewed."""
LEASE_RENEW_S = LEASE_TTL_S / 3
"""The active controller renews its lease when this long has passed since it last did,
not at every pass (a renewal is a store write), so it always holds it for at least
``LEASE_TTL_S - LEASE_RENEW_S`` more when it acts."""


class Controller:
    def __init__(self, store: Store, registry: LocalRegistry, bus: Bus,
                 defaults: EngineSettings, *, holder: str | None = None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = registry
        self.bus = bus
        self.holder = holder or (f"controller {socket.gethostname()} pid {os.getpid()} "
                                 f"{uuid.uuid4().hex[:6]}")
        self.interval_s = interval_s
        self.clock = clock
        self.term: int | None = None
        self.directory = NodeDirectory()
        self.defaults = defaults
        self.estimates = Estimates(registry, defaults)
        self.autoscaler = Autoscaler(since=clock())
        self._wake = asyncio.Event()
        self._subscriptions: list[Subscription] = []
        self._failed_since: dict[str, float] = {}
        self._lost: set[str] = set()
        self._messages: dict[str, str | None] = {}
        self._stored_nodes: dict[str, tuple[str, float]] = {}
        self._listening_since = clock()
        self._renewed_at = 0.0
        self._moving: dict[str, str] = {}
        self._unestimated: set[str] = set()
        self._moves: dict[str, int] = {}
        self._unhealthy: dict[str, int] = {}
        """Per replica, the count of worker replacements last reported."""
        self.cluster = ""
        """The store's cluster id, on every assignment (read at the start)."""
        self._foreign: set[str] = set()
        """Nodes heard heeding another cluster (warned about once each)."""

    # -- running ---------------------------------------------------------------------

    async def start(self) -> None:
        # (Before the first heartbeat comes: another cluster's nodes are never observed.)
        await self._know_the_cluster()
        self._listening_since = self.clock()
        self._subscriptions = [
            await self.bus.subscribe(names.NODE_STATUS_TOPIC, self._on_status),
            await self.bus.subscribe(names.CHANGED_TOPIC, self._on_changed),
            await self.bus.subscribe(names.TRAFFIC_TOPIC, self._on_traffic),
            await self.bus.subscribe(names.REQUEST_EVENTS_TOPIC, self._on_request)]
        # Every node reports now, not by its next status (up to an interval): a controller
        # that has just started (or taken over) acts once it has heard them all.
        await roll_call(self.bus)

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
        if self.term is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.leases.release, LEASE, self.holder)

    async def run(self) -> None:
        await self.start()
        try:
            while True:
                try:
                    await self.run_once()
                except LLMOSError as exc:
                    log.error("reconcile failed: %s", exc.message)
                except Exception:
                    log.exception("reconcile failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
                self._wake.clear()
        finally:
            await self.stop()

    async def _on_status(self, message: TopicMessage) -> None:
        status = decode_or_ignore(NodeStatus, message.body)
        if status is None or self._heeds_another(status):
            return
        if self.directory.observe(status, self.clock()):
            self._wake.set()  # a node joined or restarted: look now

    def _heeds_another(self, status: NodeStatus) -> bool:
        """Whether the node takes its orders from another cluster's control plane (one
        with a store of its own on this bus): not ours to place on, or to stop."""
        if not status.cluster or not self.cluster or status.cluster == self.cluster:
            return False
        if status.node not in self._foreign:
            self._foreign.add(status.node)
            log.warning("node %s heeds cluster %s, not this one (%s): another control plane "
                        "with its own store shares this bus; this one leaves the node alone",
                        status.node, status.cluster, self.cluster)
        return True

    async def _on_changed(self, message: TopicMessage) -> None:
        self._wake.set()

    async def _on_traffic(self, message: TopicMessage) -> None:
        report = decode_or_ignore(TrafficReport, message.body)
        if report is not None and self.autoscaler.on_traffic(report, self.clock()):
            self._wake.set()  # more in flight than ready slots: look now

    async def _on_request(self, message: TopicMessage) -> None:
        event = decode_or_ignore(RequestEvent, message.body)
        if event is not None:
            self.autoscaler.on_request(event, self.clock())

    # -- one pass --------------------------------------------------------------------

    async def _know_the_cluster(self) -> None:
        if not self.cluster:
            self.cluster = await asyncio.to_thread(self.store.facts.cluster_id)

    async def run_once(self) -> None:
        await self._know_the_cluster()
        now = self.clock()
        if self.term is None or now - self._renewed_at >= LEASE_RENEW_S:
            term = await asyncio.to_thread(self.store.leases.acquire, LEASE, self.holder,
                                           ttl_s=LEASE_TTL_S, now=now)
            if term != self.term:
                if term is None:
                    log.info("controller %s stands by", self.holder)
                else:
                    log.info("controller %s is active (term %d)", self.holder, term)
                self.term = term
            self._renewed_at = now
        term = self.term
        if term is None:
            return
        orders = await asyncio.to_thread(self._reconcile, now, term)
        for order in orders:
            try:
                await self.bus.broadcast(names.ASSIGNMENT_TOPIC, encode(order),
                                         ttl_s=2 * names.NODE_INTERVAL_S)
            except BusError as exc:
                log.warning("assignment for %s not sent: %s", order.node, exc.message)

    def _knows_the_cluster(self, now: float) -> bool:
        """Whether this controller has heard enough to act: every node the store knows
        (and does not hold lost) has reported since it started listening, or long enough
        has passed that one that did not is lost indeed. A controller that has just
        started would otherwise take every node it has not heard from yet for lost and
        move all their replicas."""
        if now - self._listening_since >= names.NODE_LOST_AFTER * names.NODE_INTERVAL_S:
            return True
        heard = {h.status.node for h in self.directory.all()}
        expected = {n.name for n in self.store.nodes.list() if n.state != "lost"}
        return bool(heard) and expected <= heard

    def _reconcile(self, now: float, term: int) -> list[Assignment]:
        """The blocking part of a pass (the store, the registry, the solver): learn,
        plan, record, and the assignments that carry it out."""
        store = self.store
        if not self._knows_the_cluster(now):
            return []  # (learning: the heartbeats come every 2 s)
        events: list[Event] = []
        self._record_nodes(now, events)
        deployments = [p for d in store.list_deployments()
                       if (p := self._pinned(d, events)) is not None]
        replicas = store.replicas.list()
        self._learn(replicas, now, events)

        by_deployment: dict[str, list[Replica]] = defaultdict(list)
        for r in replicas:
            by_deployment[r.deployment].append(r)
        for d in deployments:
            if d.autoscale:
                self._autoscale(d, [r for r in by_deployment[d.name]
                                    if r.project == d.project], now, events)
        rollouts: dict[str, Rollout] = {}
        needs: dict[str, sched.Resources] = {}
        wanted: dict[str, Deployment] = {}
        nodes = store.nodes.list()
        draining = frozenset(n.name for n in nodes if n.state == "draining")
        avoid: dict[str, frozenset[str]] = {}
        for d in deployments:
            need = self._need(d, by_deployment[d.name], now, events)
            if need is None:
                continue
            wanted[d.name], needs[d.name] = d, need
            moving = self._rebalance(d, by_deployment[d.name], replicas, need, nodes,
                                     draining, now, events)
            rollouts[d.name] = rollout(d, by_deployment[d.name], draining, moving)
            avoid[d.name] = frozenset(r.node for r in by_deployment[d.name] if r.id in moving)
        cluster = snapshot(list(wanted.values()), needs, nodes, self.directory,
                           replicas, rollouts, now=now, failed_since=self._failed_since,
                           avoid=avoid)
        result = plan(cluster)
        kept = self._stop(replicas, rollouts, result, now, events)
        kept += self._place(wanted, result, now, events)
        self._cap(wanted, result, now, events)
        self._explain(wanted, result, now, events)
        store.events.add(events)
        return self._assignments(kept, wanted, term, now)

    def _need(self, d: Deployment, mine: list[Replica], now: float, events: list[Event]
              ) -> sched.Resources | None:
        """What one replica of ``d`` needs: the estimate or, where this control plane's
        registry cannot estimate it (it lacks the version, say), the largest reservation
        of its placed replicas, so they are not taken for a deleted deployment's. None
        (and a message) when there is neither."""
        try:
            return self.estimates.need(d)
        except LLMOSError as exc:
            placed_before = [resources_of(r.reserved) for r in mine]
            if not placed_before:
                self._message(d, f"no resource estimate: {exc.message}", events, now)
                return None
            if d.name not in self._unestimated:
                self._unestimated.add(d.name)
                log.warning("%s: no resource estimate here (%s); its replicas' "
                            "reservations stand in", d.name, exc.message)
            return max(placed_before, key=lambda r: (r.memory, r.cpu))

    def _autoscale(self, d: Deployment, mine: list[Replica], now: float,
                   events: list[Event]) -> None:
        """Set ``d``'s replica count to what its autoscaler decides (the one writer of
        it), with an event when it changes and the look kept for ``show``."""
        slots = self.defaults.overlay(dict(d.engine_settings or {})).slots
        look = self.autoscaler.look(d, mine, slots, now)
        previous, decided = d.replicas, look.decision.replicas
        changes: dict[str, Any] = {}
        if decided != previous:
            changes["replicas"] = d.replicas = decided
            events.append(_event(now, "autoscaled", d.name, None, None,
                                 look.message(d.name, previous), d.project))
        if self.autoscaler.due((d.project, d.name), bool(changes), now):
            changes["autoscale_status"] = look.status(previous)
        if changes:
            self.store.update_deployment(d.name, d.project, **changes)

    def _cap(self, wanted: dict[str, Deployment], result: sched.Plan, now: float,
             events: list[Event]) -> None:
        """An autoscaled deployment whose replicas cannot all be placed goes back to
        what was placed (never below its ``min``) and holds there for a while: the
        autoscaler does not climb on capacity the cluster does not have."""
        for u in result.unschedulable:
            d = wanted.get(u.deployment)
            if d is None or not d.autoscale or u.missing <= 0:
                continue
            placed = max(bounds_of(d.autoscale).min, d.replicas - u.missing)
            if placed >= d.replicas:
                continue
            self.autoscaler.cap(d, now)
            events.append(_event(now, "autoscale-capped", d.name, None, None,
                                 f"deployment {d.name}: {u.missing} more replica(s) cannot "
                                 f"be placed ({u.summary}); autoscaling holds at {placed}",
                                 d.project))
            self.store.update_deployment(d.name, d.project, replicas=placed)
            d.replicas = placed

    def _stop(self, replicas: list[Replica], rollouts: dict[str, Rollout],
              result: sched.Plan, now: float, events: list[Event]) -> list[Replica]:
        """Remove what the rollouts retire and the plan stops; the replicas kept."""
        stopped: dict[str, str] = {}
        for change in rollouts.values():
            for rid in change.retire:
                stopped[rid] = "replaced by a replica of the new generation"
        for stop in result.stops:
            stopped[stop.replica] = stop.reason
        for r in replicas:
            if r.id in stopped:
                kind = "lost" if stopped[r.id].endswith(" lost") else "stopped"
                events.append(_event(now, kind, r.deployment, r.node, r.id,
                                     f"replica {r.id} on {r.node}: {stopped[r.id]}",
                                     r.project))
                self._failed_since.pop(r.id, None)
        self.store.replicas.remove(stopped)
        self.autoscaler.forget(set(stopped))
        return [r for r in replicas if r.id not in stopped]

    def _place(self, wanted: dict[str, Deployment], result: sched.Plan, now: float,
               events: list[Event]) -> list[Replica]:
        """Record the plan's placements as new replicas (``rescheduled`` where the
        deployment lost replicas with a node)."""
        lost_of = {s.deployment for s in result.stops if s.reason.endswith(" lost")}
        placed: list[Replica] = []
        for placement in result.placements:
            d = wanted[placement.deployment]
            replica = Replica(
                id=f"{d.name}-{uuid.uuid4().hex[:6]}", project=d.project, deployment=d.name,
                node=placement.node, generation=d.generation, model_version=d.served_ref,
                engine_settings=dict(d.engine_settings or {}),
                reserved={"cpu": placement.resources.cpu,
                          "memory": placement.resources.memory,
                          "gpus": placement.resources.gpus},
                state="scheduled", rss=0, restarts=0)
            self.store.replicas.add(replica)
            self.autoscaler.placed(replica.id, now)
            placed.append(replica)
            kind = "rescheduled" if d.name in lost_of else "scheduled"
            events.append(_event(now, kind, d.name, placement.node, replica.id,
                                 f"replica {replica.id} {kind} on {placement.node} "
                                 f"(score {placement.score:.2f}, solver {result.solver})",
                                 d.project))
        return placed

    def _explain(self, wanted: dict[str, Deployment], result: sched.Plan, now: float,
                 events: list[Event]) -> None:
        """Each deployment's message: why replicas are unschedulable, or none."""
        unschedulable = {u.deployment: u for u in result.unschedulable}
        for d in wanted.values():
            u = unschedulable.get(d.name)
            text = None
            if u is not None:
                detail = "; ".join(f"{node}: {why}" for node, why in list(u.nodes.items())[:8])
                text = f"{u.missing} replica(s) unschedulable: {u.summary}" + (
                    f" ({detail})" if detail else "")
            self._message(d, text, events, now, kind="unschedulable")

    def _assignments(self, replicas: list[Replica], wanted: dict[str, Deployment], term: int,
                     now: float) -> list[Assignment]:
        per_node: dict[str, list[ReplicaSpec]] = {h.status.node: [] for h in
                                                  self.directory.all()}
        for r in replicas:
            d = wanted.get(r.deployment)
            per_node.setdefault(r.node, []).append(ReplicaSpec(
                replica_id=r.id, deployment=r.deployment, project=r.project,
                model=r.model_version, engine=d.engine if d else "llama.cpp",
                settings=dict(r.engine_settings or {}), generation=r.generation))
        return [Assignment(node=node, term=term, replicas=specs, issued_at=now,
                           cluster=self.cluster) for node, specs in per_node.items()]

    def _rebalance(self, d: Deployment, mine: list[Replica], replicas: list[Replica],
                   need: sched.Resources, nodes: list[Node], draining: frozenset[str],
                   now: float, events: list[Event]) -> frozenset[str]:
        """The replica to move now for a rebalance (one at a time, through the rolling
        mechanism), or none; a rebalance ends when the replicas are where the scheduler
        would place them now, or after as many moves as the deployment has replicas."""
        if not d.rebalance:
            return frozenset()
        ids = {r.id for r in mine}
        moving = self._moving.get(d.name)
        if moving in ids:
            return frozenset({moving})  # still being replaced
        live = [r for r in mine if r.state in LIVE_STATES and r.generation == d.generation
                and r.node not in draining]
        if len(live) != d.replicas or any(r.state != "ready" for r in live):
            return frozenset()  # wait for a steady state
        others = [r for r in replicas if r.deployment != d.name]
        alone = snapshot([d], {d.name: need}, nodes, self.directory, others, {}, now=now,
                         failed_since=self._failed_since)
        ideal = Counter(p.node for p in plan(alone).placements)
        current = Counter(r.node for r in live)
        excess = {node: count - ideal[node] for node, count in current.items()
                  if count > ideal[node]}
        moves = self._moves.get(d.name, 0)
        if not excess or moves >= max(d.replicas, 1) or sum(ideal.values()) < len(live):
            self.store.update_deployment(d.name, d.project, rebalance=False)
            self._moves.pop(d.name, None)
            self._moving.pop(d.name, None)
            events.append(_event(now, "rebalanced", d.name, None, None,
                                 f"deployment {d.name} rebalanced: {moves} replica(s) moved",
                                 d.project))
            return frozenset()
        source = max(excess, key=lambda node: (excess[node], node))
        replica = max((r for r in live if r.node == source), key=lambda r: (r.created_at, r.id))
        self._moving[d.name] = replica.id
        self._moves[d.name] = moves + 1
        events.append(_event(now, "rebalancing", d.name, source, replica.id,
                             f"moving replica {replica.id} off {source}: the scheduler "
                             f"would place {ideal[source]} there now, not {current[source]}",
                             d.project))
        return frozenset({replica.id})

    # -- learning --------------------------------------------------------------------

    def _record_nodes(self, now: float, events: list[Event]) -> None:
        for heard in self.directory.all():
            status, name = heard.status, heard.status.node
            alive = heard.alive(now)
            known = self._stored_nodes.get(name)
            if alive and (known is None or known[0] != status.epoch or now - known[1] > 10):
                row = self.store.nodes.get(name)
                if row is None or row.epoch != status.epoch:
                    kind = "joined" if row is None else "restarted"
                    self.autoscaler.uncap()  # room may have come with it
                    events.append(_event(now, kind, None, name, None,
                                         f"node {name} {kind} ({status.cpus:g} CPUs, "
                                         f"{status.memory / 2**30:.1f} GiB)"))
                self.store.nodes.seen(name, labels=dict(status.labels), capacity={
                    "cpu": status.cpus, "memory": status.memory, "gpus": status.gpus},
                    epoch=status.epoch, at=now)
                self._stored_nodes[name] = (status.epoch, now)
            if not alive and name not in self._lost:
                self._lost.add(name)
                self.store.nodes.update(name, state="lost")
                events.append(_event(now, "node-lost", None, name, None,
                                     f"node {name} lost: no heartbeat for "
                                     f"{now - heard.at:.1f} s"))
            elif alive and name in self._lost:
                self._lost.discard(name)
                self.autoscaler.uncap()
                events.append(_event(now, "node-ready", None, name, None,
                                     f"node {name} is back"))

    def _learn(self, replicas: list[Replica], now: float, events: list[Event]) -> None:
        """Replica states and RSS from the latest status of their nodes."""
        known = {r.id for r in replicas}
        for gone in [rid for rid in self._unhealthy if rid not in known]:
            del self._unhealthy[gone]
        for r in replicas:
            heard = self.directory.get(r.node)
            if heard is None or not heard.alive(now):
                continue
            reported = next((s for s in heard.status.replicas if s.replica_id == r.id), None)
            if reported is None:
                continue  # not started there yet
            changes: dict[str, Any] = {}
            if reported.state != r.state and reported.state in (*LIVE_STATES, "failed"):
                changes["state"] = reported.state
                changes["message"] = reported.message
                events.append(_event(now, reported.state, r.deployment, r.node, r.id,
                                     f"replica {r.id} on {r.node}: {reported.state}"
                                     + (f": {reported.message}" if reported.message else ""),
                                     r.project))
                if reported.state == "failed":
                    self._failed_since.setdefault(r.id, now)
                elif reported.state == "ready":
                    self.autoscaler.became_ready(r, now)
            if reported.restarts > r.restarts:
                changes["restarts"] = reported.restarts
                events.append(_event(now, "restarted", r.deployment, r.node, r.id,
                                     f"replica {r.id} restarted ({reported.restarts} "
                                     "restarts)", r.project))
            seen = self._unhealthy.get(r.id)
            self._unhealthy[r.id] = reported.unhealthy
            if seen is not None and reported.unhealthy > seen:
                events.append(_event(now, "unhealthy", r.deployment, r.node, r.id,
                                     f"replica {r.id} on {r.node}: its worker stopped "
                                     "answering (no heartbeat); replaced", r.project))
            if reported.rss and abs(reported.rss - r.rss) > 8 << 20:
                changes["rss"] = reported.rss
            if changes:
                self.store.replicas.update(r.id, **changes)
                for key, value in changes.items():
                    setattr(r, key, value)

    def _pinned(self, deployment: Deployment, events: list[Event]) -> Deployment | None:
        if deployment.model_version:
            return deployment
        try:
            return pin(self.store, self.registry, deployment)
        except LLMOSError as exc:
            self._message(deployment, f"cannot resolve {deployment.model_ref}: {exc.message}",
                          events, self.clock())
            return None

    def _message(self, d: Deployment, text: str | None, events: list[Event], now: float,
                 kind: str = "failed") -> None:
        """Keep the deployment's status message, and an event each time it changes."""
        key = f"{d.project}/{d.name}"
        if self._messages.get(key, d.message) == text:
            self._messages[key] = text
            return
        self._messages[key] = text
        self.store.update_deployment(d.name, d.project, message=text)
        if text is not None:
            events.append(_event(now, kind, d.name, None, None, text, d.project))


def _event(at: float, kind: str, deployment: str | None, node: str | None,
           replica: str | None, message: str, project: str = "default") -> Event:
    log.info("%s", message, extra={"event": f"cluster.{kind}"})
    return Event(at=at, kind=kind, project=project, deployment=deployment, node=node,
                 replica=replica, message=message)
