"""What this gateway tells the autoscaler: per deployment, the requests it admitted
and those still in flight (``TrafficReport`` on ``names.TRAFFIC_TOPIC``).

``arrive`` counts a request once it has passed its checks and limits, before it waits
for a replica; the function it returns ends it (called once the response has ended,
whatever the outcome). Reports go out every ``interval_s`` while any deployment has
traffic, once more at zero when a deployment's requests have all finished, and at once
when a request arrives for a deployment with no replica taking requests (scaling
from zero should not wait half an interval). With nothing to say, it sleeps until a
request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from llmos.aio import stop_task
from llmos.bus import Bus, names
from llmos.bus.messages import DeploymentTraffic, TrafficReport, encode
from llmos.errors import BusError

log = logging.getLogger(__name__)

Key = tuple[str, str]


class TrafficMeter:
    def __init__(self, bus: Bus, gateway: str, *,
                 interval_s: float = names.TRAFFIC_INTERVAL_S) -> None:
        self.bus = bus
        self.gateway = gateway
        self.interval_s = interval_s
        self._arrivals: Counter[Key] = Counter()
        self._in_flight: Counter[Key] = Counter()
        self._reported: set[Key] = set()
        self._now = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def arrive(self, project: str, deployment: str, *, urgent: bool = False
               ) -> Callable[[], None]:
        key = (project, deployment)
        self._arrivals[key] += 1
        self._in_flight[key] += 1
        self._arrived.set()
        if urgent:
            self._now.set()
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._in_flight[key] -= 1
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]
        return end

    def report(self) -> TrafficReport | None:
        """What to send now (None: nothing to say)."""
        keys = set(self._arrivals) | set(self._in_flight) | self._reported
        if not keys:
            return None
        report = TrafficReport(gateway=self.gateway, at=time.time(), deployments=[
            DeploymentTraffic(project=p, deployment=d, arrivals=self._arrivals[(p, d)],
                              in_flight=self._in_flight[(p, d)]) for p, d in sorted(keys)])
        self._reported = {k for k in keys if self._in_flight[k] > 0}
        self._arrivals.clear()
        return report

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="traffic-reports")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            if not (self._arrivals or self._in_flight or self._reported):
                self._arrived.clear()
                await self._arrived.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self.interval_s)
            self._now.clear()
            report = self.report()
            if report is None:
                continue
            try:
                await self.bus.broadcast(names.TRAFFIC_TOPIC, encode(report),
                                         ttl_s=4 * self.interval_s)
            except BusError as exc:
                log.warning("traffic report not sent: %s", exc.message)
