"""Sends inference requests onto the bus and turns reply chunks back into a stream.

Each request gets a handle whose iterator yields the chunks of one attempt in
order. When a chunk of a newer attempt arrives (the request was redelivered to
another replica), the handle switches to it if nothing was yielded yet, and
otherwise fails: output already sent cannot be taken back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, Literal

from llmos.aio import Inbox
from llmos.bus import Bus, Delivery, QueueOptions, Subscription, names
from llmos.bus.messages import (
    Cancel,
    ErrorInfo,
    InferenceRequest,
    ReplyBatch,
    ReplyChunk,
    decode,
    encode,
)
from llmos.errors import BusError, LLMOSError, QueueFull, Timeout, Unavailable
from llmos.gateway.affinity import PrefixRouter
from llmos.gateway.prefixes import NONE, prefixes
from llmos.observability import metrics

log = logging.getLogger(__name__)


_DEAD_LETTER_ATTEMPT = 1_000_000  # above any real delivery count


class ReplicaFailed(LLMOSError):
    status = 502
    type = "server_error"
    code = "replica_failed"


class RequestHandle:
    def __init__(self, dispatcher: Dispatcher, request: InferenceRequest) -> None:
        self.request = request
        self._dispatcher = dispatcher
        self._inbox: Inbox[ReplyChunk | LLMOSError | None] = Inbox()
        # One timer per request (not one per chunk): it wakes the reader at the deadline.
        self._timer = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + max(0.0, request.deadline - time.time()),
            self._inbox.put, None)
        self._attempt = 0
        self._next_seq = 0
        self._early: dict[int, ReplyChunk] = {}
        self._yielded = False
        self._floor = 0
        """Attempts below this are abandoned ones (put on the bus again elsewhere)."""
        self.finished = False
        self.route: str | None = None
        """The replica's own queue it was sent to (prefix-aware routing), if any."""
        self.at: str | None = None
        """The replica it is on, by its queue: where it was sent, or where its first
        chunk came from (prefix-aware routing counts what each replica holds)."""

    @property
    def answered(self) -> bool:
        """Whether a chunk of an answer has been read (a replica has the request)."""
        return self._attempt > 0

    @property
    def attempt(self) -> int:
        """The delivery the answer comes from: above 1 when a replica failed before it."""
        return self._attempt

    def ready(self) -> bool:
        """Whether something (a chunk, an error) has arrived that the reader has not read:
        a stream then writes what it holds together with what comes next, in one write."""
        return self._next_seq in self._early or not self._inbox.empty()

    @property
    def yielded(self) -> bool:
        """Whether part of an answer was read: it cannot be taken back."""
        return self._yielded

    @property
    def floor(self) -> int:
        return self._floor

    def abandon(self, attempt: int) -> None:
        """Ignore the chunks of attempts up to ``attempt``: it was sent again."""
        self._floor = attempt + 1

    def deliver(self, chunk: ReplyChunk) -> None:
        self._inbox.put(chunk)

    def fail(self, error: LLMOSError) -> None:
        self._inbox.put(error)

    async def chunks(self) -> AsyncGenerator[ReplyChunk, None]:
        """Chunks of the current attempt in sequence order, ending with the final one."""
        try:
            while True:
                chunk = await self._next()
                self._yielded = self._yielded or bool(chunk.text or chunk.tool_calls)
                # Before the yield: a reader that stops at the final chunk never resumes
                # this generator, and a finished request needs no cancel.
                self.finished = chunk.final
                yield chunk
                if chunk.final:
                    return
        finally:
            await self.close()

    async def _next(self) -> ReplyChunk:
        while True:
            if self._next_seq in self._early:
                ready = self._early.pop(self._next_seq)
                self._next_seq += 1
                return ready
            chunk = await self._inbox.get()
            if chunk is None:
                raise Timeout(f"no answer within the request deadline of "
                              f"{self._dispatcher.timeout_s:.0f}s")
            if isinstance(chunk, LLMOSError):
                raise chunk
            if chunk.attempt < self._attempt or chunk.attempt < self._floor:
                continue  # a superseded attempt
            if chunk.attempt > self._attempt:
                if self._yielded:
                    raise ReplicaFailed(
                        "the replica serving this request failed after part of the answer "
                        "was sent; the answer is incomplete, retry the request")
                if self._attempt:
                    log.warning("request %s retried on a new attempt %d",
                                self.request.request_id, chunk.attempt)
                self._attempt = chunk.attempt
                self._next_seq = 0
                self._early.clear()
            if chunk.seq >= self._next_seq:
                self._early[chunk.seq] = chunk

    async def close(self) -> None:
        """Forget the request; if it did not finish, tell the workers to stop it."""
        self._timer.cancel()
        if self._dispatcher.forget(self.request.request_id) and not self.finished:
            await self._dispatcher.cancel(self.request.request_id)


class Dispatcher:
    def __init__(self, bus: Bus, *, timeout_s: float = 600.0,
                 gateway_id: str | None = None, router: PrefixRouter | None = None,
                 reroute_after_s: float = 1.0) -> None:
        self.bus = bus
        self.router = router
        """Prefix-aware routing (None: every request takes its deployment's queue)."""
        self.reroute_after_s = reroute_after_s
        self._gone: dict[str, float] = {}
        """Routes found gone, with when: their requests are sent again after
        ``reroute_after_s`` (an answer already on its way arrives first)."""
        self.timeout_s = timeout_s
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self.reply_to = names.reply_queue(self.gateway_id)
        self._handles: dict[str, RequestHandle] = {}
        self._submitted = asyncio.Event()
        self._declared: set[str] = set()
        self._replies: Subscription | None = None
        self._dead_letters: list[Subscription] = []

    async def start(self) -> None:
        self.bus.on_reconnect(self._on_reconnect)
        await self.bus.declare_queue(self.reply_to, QueueOptions(durable=False, exclusive=True))
        self._replies = await self.bus.consume(self.reply_to, self._on_reply, prefetch=1024,
                                               auto_ack=True)

    async def stop(self) -> None:
        for subscription in self._dead_letters:
            await subscription.cancel()
        self._dead_letters.clear()
        if self._replies is not None:
            await self._replies.cancel()
            self._replies = None

    async def submit(self, *, request_id: str, deployment: str,
                     kind: Literal["chat", "completion", "embedding"], body: dict[str, Any],
                     stream: bool,
                     max_tokens_explicit: bool, project: str = "default",
                     tier: names.Tier = "default") -> RequestHandle:
        now = time.time()
        key = names.bus_name(deployment, project)
        found = prefixes(kind, body) if self.router is not None else NONE
        request = InferenceRequest(
            request_id=request_id, deployment=deployment, kind=kind, body=body, stream=stream,
            max_tokens_explicit=max_tokens_explicit, reply_to=self.reply_to,
            deadline=now + self.timeout_s, project=project, queued_at=now, tier=tier,
            prefixes=found.hashes)
        handle = RequestHandle(self, request)
        self._handles[request_id] = handle
        self._submitted.set()
        queue = names.infer_queue(key, tier)
        try:
            if key not in self._declared:  # (also for a request sent to a replica's own
                # queue: it may have to take the shared one later, or be dead-lettered)
                for each in names.TIERS:
                    await self.bus.declare_queue(names.infer_queue(key, each),
                                                 names.infer_queue_options(key))
                dead = names.dead_letter_queue(key)
                await self.bus.declare_queue(dead)
                self._dead_letters.append(await self.bus.consume(
                    dead, self._on_dead_letter, prefetch=16))
                self._declared.add(key)
            if self.router is not None and found.hashes:
                route = self.router.choose(key, found, now)
                if route is not None and await self._send_direct(handle, route):
                    metrics.ROUTED_REQUESTS.labels(key, "replica").inc()
                    return handle
                metrics.ROUTED_REQUESTS.labels(key, "shared").inc()
            await self.bus.publish(queue, encode(request),
                                   headers={names.HEADER_REQUEST_ID: request_id},
                                   ttl_s=self.timeout_s)
        except QueueFull as exc:
            self._handles.pop(request_id, None)
            raise QueueFull(f"the model {deployment!r} has too many waiting requests; "
                            f"retry in {exc.retry_after_s}s") from exc
        except BusError as exc:
            self._handles.pop(request_id, None)
            raise Unavailable(f"could not queue the request: {exc.message}") from exc
        return handle

    async def _send_direct(self, handle: RequestHandle, route: str) -> bool:
        """Send a request to a replica's own queue; False if that queue is gone."""
        assert self.router is not None
        try:
            await self.bus.publish(route, encode(handle.request), durable=False, confirm=True,
                                   headers={names.HEADER_REQUEST_ID: handle.request.request_id},
                                   ttl_s=self.timeout_s)
        except BusError as exc:
            log.info("replica queue %s refused request %s (%s): the shared queue instead",
                     route, handle.request.request_id, exc.message)
            self.router.drop(route)  # its replica left: what it holds goes elsewhere too
            return False
        handle.route = handle.at = route
        self.router.sent(route, handle.request.request_id, time.time())
        return True

    async def reroute(self, now: float) -> None:
        """Requests sent to a replica's own queue whose replica left (its goodbye, its
        heartbeats stopped, its queue changed): those with no answer read yet go to the
        shared queue, as a new attempt; those part answered fail, as after a redelivery."""
        router = self.router
        if router is None:
            return
        routed = [h for h in self._handles.values() if h.route is not None]
        gone = {h.route for h in routed if h.route is not None
                and not router.live(h.route, now)}
        for route in list(self._gone):
            if route not in gone:
                del self._gone[route]
        for route in gone:
            self._gone.setdefault(route, now)
        due = {route for route, since in self._gone.items()
               if now - since >= self.reroute_after_s}
        for handle in routed:
            if handle.route not in due or handle.finished or handle.at is None:
                continue  # (``at`` None: its final chunk came, unread yet)
            route, handle.route, handle.at = handle.route, None, None
            router.done(route, handle.request.request_id, now)
            if handle.yielded:
                handle.fail(ReplicaFailed(
                    "the replica serving this request left after part of the answer was "
                    "sent; the answer is incomplete, retry the request"))
                continue
            attempt = max(handle.attempt, 1)
            handle.abandon(attempt)
            request = handle.request.model_copy(update={"attempt_base": attempt})
            handle.request = request
            log.warning("request %s: its replica %s left before answering; sent to the "
                        "shared queue", request.request_id, route)
            key = names.bus_name(request.deployment, request.project)
            metrics.ROUTED_REQUESTS.labels(key, "again").inc()
            try:
                await self.bus.publish(names.infer_queue(key, request.tier), encode(request),
                                       headers={names.HEADER_REQUEST_ID: request.request_id},
                                       ttl_s=max(1.0, request.deadline - now))
            except BusError as exc:
                handle.fail(Unavailable(f"could not queue the request again after its "
                                        f"replica left: {exc.message}"))

    def _placed(self, handle: RequestHandle, chunk: ReplyChunk) -> None:
        """A first or final chunk names its replica: count the request on it until it
        ends; at its end, that replica holds its prefixes."""
        assert self.router is not None and chunk.served_by is not None
        if chunk.attempt < handle.floor:
            return  # an abandoned attempt's
        now = time.time()
        if handle.at != chunk.served_by:
            if handle.at is not None:
                self.router.done(handle.at, chunk.request_id, now)
            handle.at = chunk.served_by
            # Since it was queued: it may have held a slot there long before its first
            # chunk (a long prefill), and the replica's heartbeats counted it then.
            self.router.sent(chunk.served_by, chunk.request_id,
                             handle.request.queued_at or now)
        if chunk.final:
            self.router.done(chunk.served_by, chunk.request_id, now)
            handle.at = None
            if chunk.error is None:
                self.router.learn(handle.request.prefixes, chunk.served_by, now)

    async def busy(self) -> None:
        """Return once a request is in flight (at once if one is)."""
        while not self._handles:
            self._submitted.clear()
            await self._submitted.wait()

    def unanswered(self) -> dict[str, list[RequestHandle]]:
        """Requests in flight with no chunk read yet, by deployment (its bus name)."""
        waiting: dict[str, list[RequestHandle]] = {}
        for handle in self._handles.values():
            if not handle.answered:
                key = names.bus_name(handle.request.deployment, handle.request.project)
                waiting.setdefault(key, []).append(handle)
        return waiting

    def forget(self, request_id: str) -> bool:
        handle = self._handles.pop(request_id, None)
        if handle is None:
            return False
        if handle.at is not None and self.router is not None:
            self.router.done(handle.at, request_id, time.time())
        return True

    async def cancel(self, request_id: str) -> None:
        try:
            await self.bus.broadcast(names.CANCEL_TOPIC, encode(Cancel(request_id=request_id)))
        except BusError as exc:
            log.warning("could not cancel %s: %s", request_id, exc)

    async def _on_dead_letter(self, delivery: Delivery) -> None:
        """A request the replicas failed on too often (or that expired): tell its client.

        Any gateway may take it; the answer goes to the reply queue of the one that
        asked, as a chunk of an attempt no replica can reach, so it wins.
        """
        try:
            request = decode(InferenceRequest, delivery.body)
        except BusError as exc:
            log.error("dropped an undecodable dead letter: %s", exc)
            await delivery.ack()
            return
        if time.time() < request.deadline:
            log.error("request %s dead-lettered after %d failed deliveries",
                      request.request_id, names.INFER_DELIVERY_LIMIT)
            chunk = ReplyChunk(
                request_id=request.request_id, attempt=_DEAD_LETTER_ATTEMPT, seq=0, final=True,
                error=ErrorInfo(
                    status=500, type="server_error", code="request_dead_lettered",
                    message=f"the request failed on {names.INFER_DELIVERY_LIMIT} deliveries "
                            "to replicas (they crashed or failed on it); it was given up"))
            try:
                await self.bus.publish(request.reply_to, encode(ReplyBatch(chunks=[chunk])),
                                       durable=False, confirm=True)
            except BusError as exc:
                log.warning("could not report dead letter %s: %s", request.request_id, exc)
        await delivery.ack()

    async def _on_reconnect(self) -> None:
        # Replies sent while the connection was down went to a reply queue that died
        # with it: the requests in flight cannot be answered reliably any more.
        for handle in list(self._handles.values()):
            handle.fail(Unavailable(
                "the connection to the message bus was lost while this request was in "
                "flight; its answer may be lost, so retry the request"))

    async def _on_reply(self, delivery: Delivery) -> None:
        try:
            batch = decode(ReplyBatch, delivery.body)
        except BusError as exc:
            log.error("dropped a reply: %s", exc)
            return
        handles = self._handles
        for chunk in batch.chunks:
            handle = handles.get(chunk.request_id)
            if handle is not None:
                handle.deliver(chunk)
                if chunk.served_by is not None and self.router is not None:
                    self._placed(handle, chunk)
