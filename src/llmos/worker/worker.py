"""The Worker: consumes ``infer.<deployment>``, gives each request a slot and has the
engine serve it (``serving.py``), which streams its reply chunks.

The same class runs inside ``llmos serve`` (embedded) and as its own process.
A request is acked only after its final chunk is published, so a worker that
dies mid-request leaves the message to be redelivered to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from llmos import __version__
from llmos.bus import Bus, Delivery, Subscription, TopicMessage, names
from llmos.bus.messages import (
    Cancel,
    ErrorInfo,
    Heartbeat,
    InferenceRequest,
    RequestEvent,
    Usage,
    decode,
    decode_or_ignore,
    encode,
)
from llmos.engines.base import Engine
from llmos.errors import BusError, LLMOSError
from llmos.observability import metrics
from llmos.observability.context import request_id_var
from llmos.observability.telemetry import TelemetryPublisher
from llmos.worker.cancels import CancelBook
from llmos.worker.cohort import BURST_WINDOW_S
from llmos.worker.outbox import Outbox
from llmos.worker.presence import Presence
from llmos.worker.prompt import check_prompt_bound
from llmos.worker.recent import RecentPrefixes
from llmos.worker.replies import Replies
from llmos.worker.serving import Serving, error_info, failure_outcome
from llmos.worker.slots import STANDBY, TieredSlots

log = logging.getLogger(__name__)



class Worker:
    def __init__(self, bus: Bus, engine: Engine, deployment: str, *,
                 worker_id: str | None = None, home: str | None = None,
                 heartbeat_interval_s: float = names.HEARTBEAT_INTERVAL_S) -> None:
        self.bus = bus
        self.engine = engine
        self.deployment = deployment
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.epoch = uuid.uuid4().hex[:12]
        """This start of the worker: commands for an earlier one are not for us."""
        self.heartbeat_interval_s = heartbeat_interval_s
        self.home = home
        self.host = socket.gethostname()
        self.started_at = time.time()
        self._leaving = False
        self.draining = False
        self._paused: list[Subscription] = []
        self._presence = Presence(bus, self.worker_id, self.epoch, heartbeat_interval_s,
                                  self.heartbeat, self._command)
        self._events = TelemetryPublisher(bus, names.REQUEST_EVENTS_TOPIC)
        self.slots = engine.config.slots
        self._engine_slots = TieredSlots(self.slots, names.TIERS,
                                         STANDBY if engine.takes_standby else 0)
        self._places = self._engine_slots.capacity
        """Slots and standby: a thread for each (the engine's calls block their thread)."""
        self._pool = ThreadPoolExecutor(max_workers=self._places,
                                        thread_name_prefix=f"engine-{deployment}")
        self._serving = Serving(engine, deployment, self._pool)
        self._outbox = Outbox(bus)
        self._cancels_book = CancelBook()
        self._requests: list[Subscription] = []
        self.route: str | None = None
        """Its own request queue (prefix-aware routing): new with each start, reconnect."""
        self._direct: Subscription | None = None
        self._recent = RecentPrefixes()
        self._cancels: Subscription | None = None
        self._stopping = False
        labels = {"deployment": deployment, "worker": self.worker_id}
        self._slots_gauge = metrics.WORKER_SLOTS.labels(**labels)
        self._busy_gauge = metrics.WORKER_BUSY_SLOTS.labels(**labels)

    @property
    def busy_slots(self) -> int:
        """Requests the engine runs now (another may be on standby in the engine, and
        others wait here for a place)."""
        return self._engine_slots.running

    async def start(self) -> None:
        self._serving.start(asyncio.get_running_loop())
        for tier in names.TIERS:
            await self.bus.declare_queue(names.infer_queue(self.deployment, tier),
                                         names.infer_queue_options(self.deployment))
        self.bus.on_reconnect(self._on_reconnect)
        self._cancels = await self.bus.subscribe(names.CANCEL_TOPIC, self._on_cancel)
        self._requests = await self._consume_tiers()
        await self._open_route()
        await self._presence.subscribe()
        # Start every engine thread now, not during the first burst of requests.
        # (Each task waits for all the others, so the pool must create all its threads.)
        barrier = threading.Barrier(self._places, timeout=10)
        for future in [self._pool.submit(barrier.wait) for _ in range(self._places)]:
            await asyncio.wrap_future(future)
        self._slots_gauge.set(self.slots)
        self._busy_gauge.set(0)
        self._presence.start_beating()
        self._events.start()
        log.info("worker %s consuming %s with %d slots", self.worker_id,
                 names.infer_queue(self.deployment), self.slots)

    async def _consume_tiers(self) -> list[Subscription]:
        """One subscription per service tier, each with a prefetch of our places (slots
        and standby).

        Up to that many requests of each tier wait here; a free place goes to the best
        tier first, so a backlog of one tier never hides a better one from this worker.
        """
        subscriptions = []
        for tier in names.TIERS:
            async def on_request(delivery: Delivery, tier: names.Tier = tier) -> None:
                await self._on_request(delivery, tier)

            subscriptions.append(await self.bus.consume(
                names.infer_queue(self.deployment, tier), on_request, prefetch=self._places))
        return subscriptions

    async def _open_route(self) -> None:
        """Consume a new own queue; the one before (if any) goes. Gateways send it the
        requests whose prefix this replica holds, while it has free slots."""
        old, old_route = self._direct, self.route
        route = names.direct_queue(self.deployment, uuid.uuid4().hex[:12])
        await self.bus.declare_queue(route, names.DIRECT_QUEUE_OPTIONS)

        async def on_request(delivery: Delivery) -> None:
            await self._on_request(delivery, None)

        self._direct = await self.bus.consume(route, on_request, prefetch=self._places)
        self.route = route
        if old is not None and old_route is not None:
            await self._close_route(old, old_route)

    async def _close_route(self, subscription: Subscription, route: str) -> None:
        with contextlib.suppress(BusError):
            await subscription.cancel()
            await self.bus.delete_queue(route)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop generating; requests in flight go back to the queue for another replica."""
        self._stopping = True
        self._cancels_book.cancel_all()
        deadline = time.monotonic() + timeout_s
        while self._cancels_book and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._outbox.close()
        self._leaving = True
        with contextlib.suppress(BusError):
            await self._presence.send()  # goodbye: it leaves the lists at once
        await self._presence.stop()
        await self._events.stop()
        for sub in (*self._requests, self._cancels, *self._paused):
            if sub is not None:
                await sub.cancel()
        if self._direct is not None and self.route is not None:
            await self._close_route(self._direct, self.route)
            self._direct = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._slots_gauge.set(0)

    async def drain(self) -> None:
        """Take no new requests; those in flight finish. ``resume`` undoes it."""
        if self.draining or not self._requests:
            return
        self.draining = True
        for subscription in self._requests:
            await subscription.pause()
        self._paused.extend(self._requests)
        self._requests = []
        log.info("worker %s draining: %d requests in flight", self.worker_id, self.busy_slots)
        await self._presence.send()

    async def resume(self) -> None:
        if not self.draining:
            return
        self._requests = await self._consume_tiers()
        self.draining = False
        if not self._cancels_book:  # nothing left to settle on the paused subscriptions
            for sub in self._paused:
                await sub.cancel()
            self._paused.clear()
        log.info("worker %s resumed", self.worker_id)
        await self._presence.send()

    def heartbeat(self) -> Heartbeat:
        config = self.engine.config
        return Heartbeat(worker_id=self.worker_id, epoch=self.epoch,
                         deployment=self.deployment, host=self.host,
                         slots=self.slots, busy=self.busy_slots, draining=self.draining,
                         sent_at=time.time(), interval_s=self.heartbeat_interval_s,
                         pid=os.getpid(), home=self.home, version=__version__,
                         started_at=self.started_at, leaving=self._leaving,
                         engine={"model_file": config.model_path.name, "slots": config.slots,
                                 "ctx_size": config.ctx_size, "threads": config.threads,
                                 "batch_size": config.batch_size,
                                 "kv_unified": config.kv_unified},
                         route=self.route, prefixes=self._recent.newest())

    async def _command(self, action: Literal["drain", "resume"]) -> None:
        if action == "drain":
            await self.drain()
        else:
            await self.resume()

    async def _on_reconnect(self) -> None:
        if self.bus.deliveries_survive_reconnect:
            return  # what it holds is still its own: finish it
        # The deliveries in flight belonged to the lost connection; the broker hands
        # them out again, so finishing them here would only compute answers twice.
        self._cancels_book.cancel_all()
        # Its own queue went with the connection, and what was in it: a new queue, and a
        # heartbeat naming it, so gateways send those requests again (and new ones there).
        if self.route is not None and not self._stopping:
            try:
                await self._open_route()
                await self._presence.send()
            except BusError as exc:
                log.error("could not open this replica's own queue again: %s", exc)

    async def _on_cancel(self, message: TopicMessage) -> None:
        cancel = decode_or_ignore(Cancel, message.body)
        if cancel is not None:
            self._cancels_book.cancel(cancel.request_id)

    async def _on_request(self, delivery: Delivery, tier: names.Tier | None) -> None:
        """A request from a tier's shared queue, or (``tier`` None) from our own queue."""
        try:
            request = decode(InferenceRequest, delivery.body)
        except BusError as exc:
            log.error("dropped an undecodable request: %s", exc)
            await delivery.nack(requeue=False)
            return
        tier = tier or request.tier
        request_id_var.set(request.request_id)
        early = self._cancels_book.cancelled_before(request.request_id)
        if early or time.time() > request.deadline:
            # Nobody waits for this answer any more.
            metrics.WORKER_REQUESTS.labels(self.deployment, "skipped").inc()
            await delivery.ack()
            return
        started = time.monotonic()
        slotted: float | None = None
        queued_s = max(0.0, time.time() - request.queued_at) if request.queued_at else None
        cancel = self._cancels_book.track(request.request_id)
        publish = Replies(self._outbox, request,
                          request.attempt_base + delivery.delivery_count, self.route)
        try:
            # Before a slot: a prompt that surely overflows one never waits for it.
            if request.kind != "embedding":
                check_prompt_bound(request.kind, request.body, request.max_tokens_explicit,
                                   self.engine.config.ctx_per_slot, self.engine.longest_token)
            async with self._engine_slots.slot(tier) as queues:
                slotted = time.monotonic()
                self._busy_gauge.set(self.busy_slots)
                self._presence.changed()
                if self._stopping:
                    outcome = "requeue"
                elif cancel.is_set() or time.time() > request.deadline:
                    outcome = "skipped"  # cancelled or expired while it waited for a slot
                elif request.kind == "embedding":
                    outcome = await self._serving.embed(request, publish)
                else:
                    # (Before its answer: the next turn may come as soon as it is read.)
                    self._recent.add(request.prefixes)
                    # Queued work (it waits for a slot, here, in the engine or in the
                    # queue) is never held back for a burst: only requests that just came
                    # may be a burst.
                    queued = queues or (queued_s is not None and queued_s > BURST_WINDOW_S)
                    outcome = await self._serving.generate(request, publish, cancel,
                                                           queued=queued)
                    if outcome == "cancelled" and self._stopping:
                        outcome = "requeue"  # for another replica: nobody cancelled it
        except LLMOSError as exc:  # refused before it reached the engine
            await publish.chunk(final=True, error=error_info(exc))
            outcome = failure_outcome(exc)
        except Exception:
            # A bug here must not bounce the request between replicas forever.
            log.exception("worker failed on a request")
            await publish.chunk(final=True, error=ErrorInfo(
                status=500, type="server_error", code="worker_error",
                message="the worker failed on this request"))
            outcome = "error"
        except BaseException:
            await delivery.nack(requeue=True)
            raise
        finally:
            self._cancels_book.release(request.request_id)
            self._busy_gauge.set(self.busy_slots)
            if slotted is not None:
                self._presence.changed()
        if outcome == "requeue":
            await delivery.nack(requeue=True)
        else:
            await delivery.ack()
        metrics.WORKER_REQUESTS.labels(self.deployment, outcome).inc()
        usage = publish.usage or Usage()
        ended = time.monotonic()
        took = ended - started
        event = RequestEvent(
            request_id=request.request_id, deployment=self.deployment,
            worker_id=self.worker_id, outcome=outcome, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, duration_s=round(took, 4),
            at=time.time(), project=request.project, attempt=delivery.delivery_count,
            service_s=round(ended - slotted, 4) if slotted is not None else None,
            queue_wait_s=round(queued_s, 4) if queued_s is not None else None,
            first_token_s=(round(publish.first_text_at - started, 4)
                           if publish.first_text_at else None),
            host=self.host, pid=os.getpid())
        log.info("request %s: %s in %.3f s", request.request_id, outcome, took, extra={
            "event": "request", "request_id": request.request_id,
            "fields": event.log_fields()})
        if self.draining and self.busy_slots == 0:
            with contextlib.suppress(BusError):
                await self._presence.send()  # drained: say so now, not at the next beat
        self._events.offer(encode(event))
