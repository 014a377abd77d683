"""The gateway's view of the workers and the commands it sends them.

It follows their heartbeats (who is alive), their request telemetry (the
``llmos_fleet_*`` metrics, counting every worker on the bus, in any process) and
their warnings and errors and the line each logs per request (logged here under
``llmos.fleet`` with the worker id, so this gateway's log holds the whole story of
the requests it served).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Literal

from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.beacon import roll_call
from llmos.bus.messages import (
    Command,
    Heartbeat,
    LogEvent,
    RequestEvent,
    decode_or_ignore,
    encode,
)
from llmos.errors import BadRequest, BusError, NotFound, Unavailable
from llmos.gateway.affinity import PrefixRouter
from llmos.gateway.directory import WorkerDirectory
from llmos.observability import metrics

log = logging.getLogger(__name__)
fleet_log = logging.getLogger("llmos.fleet")
HOST = socket.gethostname()


class WorkerNotFound(NotFound):
    code = "worker_not_found"


class WorkerControl:
    def __init__(self, bus: Bus, router: PrefixRouter | None = None) -> None:
        self.bus = bus
        self.directory = WorkerDirectory()
        self.router = router
        """Prefix-aware routing, which learns each replica's prefixes from its heartbeats."""
        self._subscriptions: list[Subscription] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listening_since = time.time()
        self._unheard_s = names.HEARTBEAT_INTERVAL_S
        """How long after its start the workers that run may not all have been heard:
        until their next heartbeat, or, once they were asked to beat, until they answer."""

    def serving(self, deployment: str) -> bool:
        """Whether a live, undrained worker of ``deployment`` is known (hot path: cheap)."""
        return self.directory.serving(deployment, time.time())

    def alive(self, deployment: str) -> bool:
        """Whether a worker of ``deployment`` may still answer: one takes requests, or
        one (draining, say) still has requests on its engine."""
        now = time.time()
        return (self.directory.serving(deployment, now)
                or self.directory.working(deployment, now))

    async def wait_for_replica(self, deployment: str, timeout_s: float) -> bool:
        """True once a live, undrained worker of ``deployment`` is known; False if none is
        heard of within ``timeout_s`` (or, just after start, until the workers that
        already run have all been heard: ``names.ROLL_CALL_WAIT_S`` after asking them,
        one heartbeat interval if that could not be asked)."""
        if self.serving(deployment):
            return True
        unheard = self._listening_since + self._unheard_s - time.time()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(deployment, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, max(timeout_s, unheard))
            return True
        except TimeoutError:
            return self.serving(deployment)
        finally:
            waiting = self._waiters.get(deployment, [])
            if waiter in waiting:
                waiting.remove(waiter)

    async def start(self) -> None:
        self._listening_since = time.time()
        for topic, handler in ((names.HEARTBEAT_TOPIC, self._on_heartbeat),
                               (names.REQUEST_EVENTS_TOPIC, self._on_request_event),
                               (names.LOG_EVENTS_TOPIC, self._on_log_event)):
            self._subscriptions.append(await self.bus.subscribe(topic, handler))
        await self._roll_call()

    async def _roll_call(self) -> None:
        """Ask every worker to beat now, so that the ones that run are known within
        moments of this start rather than by their next heartbeat (up to an interval:
        requests for their models would wait for it)."""
        if await roll_call(self.bus):
            self._unheard_s = names.ROLL_CALL_WAIT_S

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()

    def workers(self) -> list[Heartbeat]:
        return self.directory.live(time.time())

    def worker(self, worker_id: str) -> Heartbeat:
        """The live worker ``worker_id`` names (its id, or a prefix of only its id)."""
        found = self.directory.find(worker_id, time.time())
        if not found:
            known = ", ".join(h.worker_id for h in self.workers()) or "none"
            raise WorkerNotFound(f"no live worker {worker_id!r}; live workers: {known}")
        if len(found) > 1:
            raise BadRequest(f"{worker_id!r} is the start of several workers' ids: "
                             + ", ".join(h.worker_id for h in found), param="worker_id")
        return found[0]

    async def command(self, worker_id: str, action: Literal["drain", "resume"]) -> Command:
        """Send ``action`` to the running process of ``worker_id`` (or of the one worker
        whose id starts so); void after two beats."""
        now = time.time()
        worker = self.worker(worker_id)
        worker_id = worker.worker_id
        ttl_s = 2 * worker.interval_s
        command = Command(worker_id=worker_id, epoch=worker.epoch, action=action,
                          issued_at=now, expires_at=now + ttl_s)
        try:
            await self.bus.broadcast(names.COMMAND_TOPIC, encode(command), ttl_s=ttl_s)
        except BusError as exc:
            raise Unavailable(f"could not send {action} to {worker_id}: {exc.message}") from exc
        return command

    async def _on_request_event(self, message: TopicMessage) -> None:
        event = decode_or_ignore(RequestEvent, message.body)
        if event is None:
            return
        metrics.FLEET_REQUESTS.labels(event.deployment, event.outcome).inc()
        if event.completion_tokens:
            metrics.FLEET_TOKENS.labels(event.deployment).inc(event.completion_tokens)
        if (event.pid, event.host) != (os.getpid(), HOST):
            # The worker's own line, for this gateway's log (where ``llmos logs`` looks);
            # a worker in this process has written it there already.
            fleet_log.info("worker %s: request %s: %s in %.3f s", event.worker_id,
                           event.request_id, event.outcome, event.duration_s,
                           extra={"event": "request", "request_id": event.request_id,
                                  "fields": event.log_fields()})

    async def _on_log_event(self, message: TopicMessage) -> None:
        event = decode_or_ignore(LogEvent, message.body)
        if event is None:
            return
        level = logging.getLevelName(event.level.upper())
        fleet_log.log(level if isinstance(level, int) else logging.WARNING,
                      "worker %s: %s: %s", event.worker_id, event.logger, event.message,
                      extra={"request_id": event.request_id})

    async def _on_heartbeat(self, message: TopicMessage) -> None:
        heartbeat = decode_or_ignore(Heartbeat, message.body)
        if heartbeat is not None:
            self.directory.observe(heartbeat)
            if self.router is not None:
                self.router.observe(heartbeat)
            if not heartbeat.draining:
                for waiter in self._waiters.pop(heartbeat.deployment, []):
                    if not waiter.done():
                        waiter.set_result(None)
