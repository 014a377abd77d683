"""Hands a burst of requests to the engine together.

llama.cpp starts a batch with whatever requests it holds. When the requests of a
burst reach it one by one, each start of an engine thread (and the CPU its compute
threads then take) delays the event loop that is still taking in the rest, so
llama.cpp runs the first request or two alone and the others wait a whole batch.
Here the requests of a burst are collected until the event loop has had a pass
with nothing new; then those the engine can take in one call (same parameters,
different prompts) go as one call, and the rest each on an engine thread, all at
once.

A burst that reaches an idle engine arrives over a few milliseconds (each HTTP
request is parsed in turn), more than one loop pass, and in clumps: while the event
loop parses some, the others wait in their sockets. So when the last idle start
was a burst (a second request came within ``BURST_WINDOW_S`` while the first was
still on the engine), a request that finds the engine idle, or finishing (within
``BURST_WINDOW_S`` of a request that ended while others were still on it: clients
whose requests ended together come back together), is held until as many requests
wait as came with that idle start, or ``QUIET_S`` passes with none new, and at most
``MAX_HOLD_S``. A lone request at an idle engine (one client at a time) is never
held, and neither is any request while the engine is busy with requests that have
not just ended: llama.cpp then takes all that arrived during its current batch into
the next one anyway. Nor is queued work (``submit(hold=False)``: a request that
waited for a slot, in the queue or at the worker, or that goes on standby in the
engine while every slot runs), and one that joins a hold ends it:
a slot freed under a backlog goes to the next request at once, not after a hold for
clients that are not coming back (11 ms of an idle slot per hand-off, measured).
(A burst's requests can take 20-30 ms to reach the worker when
the event loop is also finishing the streams of the burst before it.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from llmos.engines.base import (
    CannotMerge,
    Engine,
    EventCallback,
    GenerationResult,
    Kind,
    Progress,
    PromptProgress,
)

log = logging.getLogger(__name__)

_MAX_PASSES = 64
"""At most this many loop passes of holding, so a steady flow is never held back."""
BURST_WINDOW_S = 0.02
QUIET_S = 0.006
MAX_HOLD_S = 0.03


@dataclass
class _Call:
    future: asyncio.Future[GenerationResult]
    kind: Kind
    body: dict[str, Any]
    on_event: EventCallback
    holdable: bool = True


class CohortLauncher:
    def __init__(self, pool: Executor, engine: Engine,
                 on_hold: Callable[[float], None] | None = None) -> None:
        self._pool = pool
        self._engine = engine
        self._on_hold = on_hold
        """Told how long each hold lasted (seconds)."""
        self._pending: list[_Call] = []
        self._seen = 0
        self._passes = 0
        self._quiet = 0
        self._scheduled = False
        self._running = 0
        self._idle_start = float("-inf")
        self._idle_start_count = 0
        self._shared_end = float("-inf")
        """When a request last ended while another was still on the engine."""
        self._hold_first = 0.0
        self._hold_last = 0.0
        self._hold_call: asyncio.Handle | None = None
        self.merged_calls = 0
        """Engine calls that carried more than one request (for tests and metrics)."""
        self.holds = 0
        """Idle starts held back for the rest of a burst."""

    def submit(self, kind: Kind, body: dict[str, Any], on_event: EventCallback, *,
               hold: bool = True) -> asyncio.Future[GenerationResult]:
        """Start a request soon, with those that come with it. ``hold=False``: a request
        that waited for a slot, which is never held back for a burst (it and whatever
        gathers with it start after this loop pass)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GenerationResult] = loop.create_future()
        if not self.idle and loop.time() - self._idle_start < BURST_WINDOW_S:
            self._idle_start_count += 1  # it joins the requests of the last idle start
        self._pending.append(_Call(future, kind, body, on_event, hold))
        self._running += 1
        future.add_done_callback(self._ended)
        if not self._scheduled:
            self._scheduled = True
            self._seen = len(self._pending)
            self._passes = 0
            self._quiet = 0
            loop.call_soon(self._tick, loop)
        elif self._hold_call is not None and (self._burst_in or not hold):
            self._hold_call.cancel()  # the burst is all in (or one may not wait): start now
            self._hold_call = loop.call_soon(self._hold, loop)
        return future

    def _ended(self, future: asyncio.Future[GenerationResult]) -> None:
        self._running -= 1
        if self._running > len(self._pending):
            self._shared_end = future.get_loop().time()

    @property
    def idle(self) -> bool:
        """No request of this launcher is on the engine or waiting to start."""
        return self._running == len(self._pending)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A tick runs somewhere inside a loop pass: callbacks after it in the same pass
        # may still submit, so only two ticks in a row with nothing new make a quiet pass.
        self._passes += 1
        if len(self._pending) != self._seen:
            self._seen = len(self._pending)
            self._quiet = 0
        else:
            self._quiet += 1
        if self._quiet < 2 and self._passes < _MAX_PASSES:
            loop.call_soon(self._tick, loop)
            return
        if self._burst_to_gather(loop):  # (no tick runs while a hold is on)
            self._hold_first = self._hold_last = loop.time()
            self.holds += 1
            self._hold_call = loop.call_later(QUIET_S, self._hold, loop)
            return
        self._launch(loop)

    @property
    def _burst_in(self) -> bool:
        """As many requests wait as came with the last idle start."""
        return len(self._pending) >= self._idle_start_count

    def _burst_to_gather(self, loop: asyncio.AbstractEventLoop) -> bool:
        """The last idle start was a burst, this one may be too, and it is not all in."""
        if self._idle_start_count < 2 or self._burst_in:
            return False
        if not all(call.holdable for call in self._pending):
            return False  # queued work: it has waited already
        return self.idle or loop.time() - self._shared_end < BURST_WINDOW_S

    def _hold(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if len(self._pending) != self._seen:
            self._seen = len(self._pending)
            self._hold_last = now
        if self._burst_in or not all(call.holdable for call in self._pending):
            self._launch(loop)
            return
        quiet_until = self._hold_last + QUIET_S
        if now < quiet_until and now - self._hold_first < MAX_HOLD_S:
            self._hold_call = loop.call_later(
                min(quiet_until, self._hold_first + MAX_HOLD_S) - now, self._hold, loop)
            return
        self._launch(loop)

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.idle:  # an idle start: count who comes with it, to know the next one
            self._idle_start = loop.time()
            self._idle_start_count = len(self._pending)
        if self._hold_first and self._on_hold is not None:
            self._on_hold(loop.time() - self._hold_first)
        self._hold_first = 0.0
        if self._hold_call is not None:
            self._hold_call.cancel()
            self._hold_call = None
        self._scheduled = False
        cohort = [call for call in self._pending if not call.future.cancelled()]
        self._pending = []
        groups: dict[str, list[_Call]] = defaultdict(list)
        for call in cohort:
            # A lone request needs no merge key (one client at a time: the hot path).
            key = self._engine.merge_key(call.kind, call.body) if len(cohort) > 1 else None
            if key is None:
                self._start(loop, call)
            else:
                groups[key].append(call)
        for group in groups.values():
            if len(group) == 1:
                self._start(loop, group[0])
            else:
                self._start_merged(loop, group)

    def _start(self, loop: asyncio.AbstractEventLoop, call: _Call,
               progress: Progress | None = None) -> None:
        try:
            if progress is None:
                submitted = self._pool.submit(self._engine.generate, call.kind, call.body,
                                              call.on_event)
            else:
                submitted = self._pool.submit(self._engine.continue_from, call.kind,
                                              call.body, progress, call.on_event)
        except RuntimeError as exc:  # the pool was shut down (the worker stopped)
            _settle(call.future, exc)
            return
        _chain(asyncio.wrap_future(submitted, loop=loop), call.future)

    def _start_merged(self, loop: asyncio.AbstractEventLoop, group: list[_Call]) -> None:
        self.merged_calls += 1

        def on_done(index: int, outcome: GenerationResult | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, group[index].future, outcome)

        def run() -> None:
            try:
                self._engine.generate_many(group[0].kind, [c.body for c in group],
                                           [c.on_event for c in group], on_done)
            except CannotMerge as exc:
                log.info("%d requests run one by one: %s", len(group), exc)
                loop.call_soon_threadsafe(self._start_each, loop, group, exc.progress)
            except BaseException as exc:
                for call in group:
                    loop.call_soon_threadsafe(_settle, call.future, exc)

        try:
            self._pool.submit(run)
        except RuntimeError as exc:  # the pool was shut down (the worker stopped)
            for call in group:
                _settle(call.future, exc)

    def _start_each(self, loop: asyncio.AbstractEventLoop, group: list[_Call],
                    progress: dict[int, Progress] | None = None) -> None:
        for index, call in enumerate(group):
            if call.future.done():
                continue
            step = (progress or {}).get(index)
            if call.on_event(PromptProgress(step.generated if step else 0)):
                # It was stopped meanwhile (its client went away too): nothing to run.
                _settle(call.future, GenerationResult(
                    "cancelled", step.prompt_tokens if step else 0,
                    step.generated if step else 0, stopped=True))
                continue
            self._start(loop, call, step)


def _settle(future: asyncio.Future[GenerationResult],
            outcome: GenerationResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _chain(inner: asyncio.Future[GenerationResult],
           outer: asyncio.Future[GenerationResult]) -> None:
    def done(_: asyncio.Future[GenerationResult]) -> None:
        if outer.cancelled():
            return
        if inner.cancelled():
            outer.cancel()
        elif (exc := inner.exception()) is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(inner.result())

    inner.add_done_callback(done)
