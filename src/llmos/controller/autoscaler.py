"""The controller's autoscaler: measures each deployment's traffic and asks the
``llmos.autoscale`` policy (the one the simulator drives) for its replica count.

What it hears (every controller hears it, the standbys too, so that one taking over
knows the traffic already):

- the gateways' ``TrafficReport``s: requests admitted per deployment (arrival rates
  over 10 s and 60 s) and in flight (admitted, not finished: waiting for a replica,
  queued on the bus, or held by a slot);
- the workers' ``RequestEvent``s: how long each finished request held its slot
  (service time, mean and variability);
- the controller's own placements and the replicas' first ready: cold starts.

The requests waiting are those in flight beyond the ready replicas' slots: with one
queue shared by the replicas, a slot that frees takes the next request, so no more
can be in service. That counts the requests a gateway holds before the bus (a
deployment at zero replicas) as well as those on it, on every bus backend alike.

Pure except for the policy's memory (``History``) and what was measured; the
controller applies what ``look`` returns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from llmos.autoscale.erlang import Queue, wait_percentile
from llmos.autoscale.measure import Arrivals, ColdStarts, InFlight, ServiceTimes
from llmos.autoscale.policy import Bounds, Decision, History, Observation, Policy
from llmos.bus.messages import RequestEvent, TrafficReport
from llmos.store import Deployment
from llmos.store.tables import Replica

Key = tuple[str, str]
"""(project, deployment)"""

SHORT_S = 10.0
LONG_S = 60.0
PRIOR_SERVICE_S = 2.0
"""Seconds a request holds a slot, assumed until one has finished."""
CAP_S = 30.0
"""A replica that could not be placed holds the count this long (or until the
cluster changes) before the autoscaler asks for one more again."""
STATUS_EVERY_S = 5.0
"""The last look is written to the store at most this often (and at every change)."""
STARTING = ("scheduled", "pulling", "starting")


def bounds_of(autoscale: dict[str, Any]) -> Bounds:
    fields = {k: autoscale[k] for k in ("min", "max", "wait_s", "percentile", "idle_s")
              if k in autoscale}
    return Bounds(**fields)


@dataclass(frozen=True)
class Look:
    """One look at one deployment: the decision and what it was made on."""

    decision: Decision
    observed: Observation
    in_flight: int
    predicted_wait_s: float
    """The objective's percentile of the wait with the decided replicas (inf: too few)."""
    cold_start_s: float | None

    def status(self, previous: int) -> dict[str, Any]:
        o = self.observed
        return {
            "at": o.now, "replicas": self.decision.replicas, "previous": previous,
            "reason": self.decision.reason, "arrival_rate_short": round(o.rate_short, 3),
            "arrival_rate_long": round(o.rate_long, 3), "service_s": round(o.service_s, 3),
            "service_cv2": round(o.service_cv2, 3), "slots": o.slots, "ready": o.ready,
            "starting": o.starting, "in_flight": self.in_flight, "waiting": o.waiting,
            "servers": self.decision.servers,
            "predicted_wait_s": (None if math.isinf(self.predicted_wait_s)
                                 else round(self.predicted_wait_s, 3)),
            "cold_start_s": None if self.cold_start_s is None else round(self.cold_start_s,
                                                                           2)}

    def message(self, name: str, previous: int) -> str:
        o, d = self.observed, self.decision
        wait = ("unbounded" if math.isinf(self.predicted_wait_s)
                else f"{self.predicted_wait_s:.2f} s")
        return (f"deployment {name} autoscaled {previous} -> {d.replicas}: {d.reason}. "
                f"λ {o.rate_short:.2f}/s (10 s), {o.rate_long:.2f}/s (60 s); service "
                f"{o.service_s:.2f} s (cv² {o.service_cv2:.2f}, μ {1 / o.service_s:.2f}/s "
                f"per slot) at {o.slots} slots; c = {d.servers} slots; {self.in_flight} in "
                f"flight, {o.waiting} waiting; predicted wait {wait}")


class Autoscaler:
    def __init__(self, *, since: float) -> None:
        self.since = since
        """When this controller started listening: rates are not diluted by before."""
        self.arrivals: dict[Key, Arrivals] = defaultdict(Arrivals)
        self.in_flight: dict[Key, InFlight] = defaultdict(InFlight)
        self.service: dict[Key, ServiceTimes] = defaultdict(ServiceTimes)
        self.cold: dict[Key, ColdStarts] = defaultdict(ColdStarts)
        self.history: dict[Key, History] = defaultdict(History)
        self.capacity: dict[Key, int] = {}
        """Ready slots at the last look."""
        self.capped_until: dict[Key, float] = {}
        self.placed_at: dict[str, float] = {}
        self.written: dict[Key, float] = {}
        self.first_look: dict[Key, float] = {}
        """When each deployment was first looked at: its idle window starts there at
        the earliest (a deployment nobody has asked yet is not idle from the start)."""

    # -- hearing ------------------------------------------------------------------------

    def on_traffic(self, report: TrafficReport, now: float) -> bool:
        """Take one gateway's report; True when a look is due now (more in flight than
        the ready slots take, a deployment at zero among them)."""
        urgent = False
        for t in report.deployments:
            key = (t.project, t.deployment)
            self.arrivals[key].add(t.arrivals, now)
            self.in_flight[key].report(report.gateway, t.in_flight, now)
            if t.in_flight and self.in_flight[key].total(now) > self.capacity.get(key, 0):
                urgent = True
        return urgent

    def on_request(self, event: RequestEvent, now: float) -> None:
        """A finished request: how long it held its slot. (Its ``deployment`` is the
        bus name, ``names.bus_name``: the name itself in project default.)"""
        if event.outcome == "ok":
            name = event.deployment.removeprefix(f"_{event.project}.")
            self.service[(event.project, name)].add(event.service_s or event.duration_s, now)

    def placed(self, replica_id: str, now: float) -> None:
        self.placed_at[replica_id] = now

    def became_ready(self, replica: Replica, now: float) -> None:
        at = self.placed_at.pop(replica.id, None)
        if at is not None:
            self.cold[(replica.project, replica.deployment)].add(now - at)

    def forget(self, replica_ids: set[str]) -> None:
        for rid in replica_ids:
            self.placed_at.pop(rid, None)

    def cap(self, d: Deployment, now: float) -> None:
        """A replica of ``d`` could not be placed: hold its count for a while."""
        self.capped_until[(d.project, d.name)] = now + CAP_S

    def uncap(self) -> None:
        """The cluster changed (a node joined or came back): try again."""
        self.capped_until.clear()

    # -- looking ------------------------------------------------------------------------

    def look(self, d: Deployment, mine: list[Replica], slots: int, now: float) -> Look:
        assert d.autoscale is not None
        key = (d.project, d.name)
        bounds = bounds_of(d.autoscale)
        # (during a rollout the old generation's ready replicas serve too; the count
        # asked for is what the policy reasons about)
        ready = min(d.replicas, sum(r.state == "ready" for r in mine))
        in_flight = self.in_flight[key].total(now)
        measured = self.service[key].mean_cv2(now)
        service_s, cv2 = measured if measured is not None else (PRIOR_SERVICE_S, 1.0)
        arrivals = self.arrivals[key]
        if key not in self.first_look:
            # Nothing is known yet (autoscaling just switched on, or this controller
            # just took over): no scale-down before a cooldown's worth of traffic.
            self.first_look[key] = self.history[key].changed_at = now
        first = self.first_look[key]
        observed = Observation(
            now=now, rate_short=arrivals.rate(SHORT_S, now, since=self.since),
            rate_long=arrivals.rate(LONG_S, now, since=self.since), service_s=service_s,
            slots=slots, ready=ready, starting=max(0, d.replicas - ready),
            waiting=max(0, in_flight - ready * slots),
            last_arrival=max(arrivals.last_at or first, first),
            service_cv2=cv2, unplaceable=int(self.capped_until.get(key, 0) > now),
            short_window_s=SHORT_S)
        self.capacity[key] = ready * slots
        decision = Policy(bounds).decide(observed, self.history[key])
        rate = max(observed.rate_short, observed.rate_long)
        predicted = wait_percentile(Queue(arrival_rate=rate, service_s=service_s,
                                          servers=decision.replicas * slots,
                                          service_cv2=cv2), bounds.percentile) \
            if decision.replicas else (0.0 if rate == 0 else math.inf)
        cold = self.cold[key]
        return Look(decision, observed, in_flight, predicted, cold.median())

    def due(self, key: Key, changed: bool, now: float) -> bool:
        """Whether to write this look to the store (every change; else now and then)."""
        if changed or now - self.written.get(key, -math.inf) >= STATUS_EVERY_S:
            self.written[key] = now
            return True
        return False
