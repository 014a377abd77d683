"""The autoscaling policy: how many replicas a deployment should have now (pure).

``Policy.decide`` takes what was measured (arrival rates over a short and a long
window, the service time and its variability at the replica's slot count, the
requests waiting, the replicas serving and those still starting) and the bounds and
objective the deployment opted in with, and returns the replica count with the
numbers behind it. The controller and ``benchmarks/autoscale_sim.py`` call the same
object.

- **Up, at once**: the fewest replicas whose slots meet the objective (Erlang C with
  Allen-Cunneen, ``erlang.py``) for the short window's rate (trusted only down to its
  Poisson lower bound, ``confidence`` deviations: noise adds nothing, a burst does;
  the long window's rate when that is higher), plus what clears the
  requests already waiting within the wait target. Replicas still starting count as
  capacity on the way: a load step adds them once, not again at every look while
  they load (the cascade target-tracking autoscalers suffer).
- **Down, slowly**: only to what the long window's rate needs with ``headroom``, never
  within ``cooldown_s`` of the last change, never below ``min`` (``down_step`` limits
  the replicas removed at once; by default none: in the simulator, one at a time kept
  a bursty trace's fleet twice as large as needed).
- **To zero** (``min == 0``): after ``idle_s`` with no arrival and nothing waiting;
  from zero, to one replica as soon as anything arrives.
- **Capped** by ``max``, and by what the scheduler could place: while a replica
  cannot be placed the count does not climb past what exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmos.autoscale.erlang import fewest_servers


@dataclass(frozen=True)
class Bounds:
    min: int = 1
    max: int = 8
    wait_s: float = 1.0
    """The objective: a request starts within ``wait_s`` ..."""
    percentile: float = 0.99
    """... for this fraction of requests."""
    idle_s: float = 300.0
    """With ``min == 0``: no arrival for this long scales to zero."""


@dataclass(frozen=True)
class Observation:
    now: float
    rate_short: float
    """Arrivals per second over the last few seconds (bursts show here first)."""
    rate_long: float
    """Arrivals per second over the last minute or so (what scale-down trusts)."""
    service_s: float
    """Mean seconds a request holds a slot at this slot count."""
    slots: int
    """Slots per replica."""
    ready: int
    """Replicas taking requests."""
    starting: int = 0
    """Replicas placed and loading: capacity on the way."""
    waiting: int = 0
    """Requests in the queue, not taken by any replica yet."""
    last_arrival: float | None = None
    service_cv2: float = 1.0
    unplaceable: int = 0
    """Replicas the scheduler could not place (they cap the count)."""
    short_window_s: float = 10.0
    """The window of ``rate_short`` (how many arrivals it saw: how much to trust it)."""


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    """Why, in words (an event's message)."""
    needed: int
    """What the objective asks for now, before bounds, cooldown and caps."""
    servers: int
    """The slots in all that Erlang C asked for (c)."""


@dataclass
class History:
    """What the policy remembers between looks (one per deployment)."""

    changed_at: float = -math.inf


@dataclass(frozen=True)
class Policy:
    bounds: Bounds
    cooldown_s: float = 60.0
    headroom: float = 1.2
    """Scale-down sizes for the long window's rate times this."""
    confidence: float = 2.0
    """Scale-up trusts the short window's rate only down to this many standard
    deviations below what it saw (a Poisson count's): noise at a few requests per
    second does not add replicas; a burst still does at once."""
    down_step: int | None = None
    """Replicas removed per scale-down at most (None: straight to what is needed)."""

    def replicas_for(self, rate: float, observed: Observation) -> tuple[int, int]:
        """(replicas, servers) meeting the objective at ``rate``, and clearing what waits
        within the wait target."""
        if rate <= 0 and observed.waiting == 0:
            return 0, 0
        servers = fewest_servers(max(rate, 1e-9), observed.service_s,
                                 wait_s=self.bounds.wait_s, percentile=self.bounds.percentile,
                                 service_cv2=observed.service_cv2)
        backlog = math.ceil(observed.waiting * observed.service_s / max(self.bounds.wait_s,
                                                                         1e-3))
        # What waits beyond what the busy slots take is worked off by extra ones.
        extra = max(0, backlog - max(0, observed.ready * observed.slots - servers))
        servers += extra
        return math.ceil(servers / observed.slots), servers

    def rising_rate(self, observed: Observation) -> float:
        """The rate scale-up sizes for: the last minute's, or the short window's lower
        confidence bound when that is higher."""
        seen = observed.rate_short * observed.short_window_s
        bound = max(0.0, seen - self.confidence * math.sqrt(seen)) / observed.short_window_s
        return max(observed.rate_long, bound)

    def decide(self, observed: Observation, history: History) -> Decision:
        b = self.bounds
        have = observed.ready + observed.starting
        now = observed.now
        up, servers = self.replicas_for(self.rising_rate(observed), observed)
        idle = observed.waiting == 0 and (
            observed.last_arrival is None or now - observed.last_arrival >= b.idle_s)

        def done(replicas: int, reason: str) -> Decision:
            if replicas != have:
                history.changed_at = now
            return Decision(replicas, reason, up, servers)

        if b.min == 0 and idle and observed.rate_short == 0:
            return done(0, f"idle for {b.idle_s:g}s: scaled to zero" if have else "idle")
        wanted = max(b.min, min(b.max, max(up, 1 if observed.waiting else 0)))
        if wanted > have:
            if observed.unplaceable:
                return Decision(have, f"wants {wanted}, but {observed.unplaceable} "
                                      "cannot be placed: holding", up, servers)
            return done(wanted, f"up: {observed.rate_short:.2f}/s needs {servers} slots "
                                f"({wanted} x {observed.slots}); {observed.waiting} waiting")
        floor = max(b.min, 1)  # (only the idle window takes the last replica)
        if wanted == have or have <= floor:
            return Decision(have, "steady", up, servers)
        # Down: slowly, on the long window, with headroom, one at a time.
        down, _ = self.replicas_for(observed.rate_long * self.headroom, observed)
        target = max(floor, min(b.max, max(down, wanted)))
        if target >= have:
            return Decision(have, "steady (the last minute's traffic needs them)", up,
                            servers)
        if now - history.changed_at < self.cooldown_s:
            return Decision(have, f"cooling down: {target} would do", up, servers)
        step = have - target if self.down_step is None else min(self.down_step,
                                                                 have - target)
        return done(have - step, f"down: {observed.rate_long:.2f}/s over the last minute "
                                 f"needs {target}")
