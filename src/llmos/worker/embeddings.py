"""Embedding requests on a worker: each one's inputs to vectors, in base64 float32.

With an engine that has no batching of its own (``Engine.gathers_embeddings``), the
requests that arrive together go to it as one call (requests from any client): see
``Gatherer``. Otherwise each request is its own call and the engine batches them
itself.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from llmos.engines.base import Embedded, Engine
from llmos.errors import BadRequest

Inputs = list[str | list[int]]


def inputs_of(body: dict[str, Any]) -> Inputs:
    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(i, int) for i in given):
        return [list(given)]
    if isinstance(given, list) and given:
        return list(given)
    raise BadRequest("input is empty", param="input")


def encoded(vector: Sequence[float], dimensions: int | None) -> str:
    """base64 of little-endian float32; cut to ``dimensions`` and made unit length again
    (for a model trained so: Matryoshka)."""
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vector = [x / norm for x in vector]
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


LONGEST = 10
"""A batch waits at most this many ``wait_s`` after its first request."""


class Gatherer:
    """One engine call at a time for the embedding requests that arrive together.

    While the engine is idle, a batch is sent when it is full, or once no request has
    come for ``wait_s`` (at most ``LONGEST`` times that after its first): requests that
    come in a stream are gathered, a lone one waits ``wait_s``. While a call runs, what
    arrives gathers and goes the moment it ends. (With only a fixed window after the
    first request, 32 clients each sending one text after another split into a small
    batch and a large one by turns: 15.7 texts a call, 0.81x of calling the engine
    with batches of 32.)"""

    def __init__(self, pool: Executor, engine: Engine, *, max_inputs: int,
                 wait_s: float, on_call: Callable[[int], None] | None = None) -> None:
        self.pool = pool
        self.on_call = on_call
        """Told the inputs of each engine call."""
        self.engine = engine
        self.max_inputs = max(1, max_inputs)
        self.wait_s = wait_s
        self._batch: list[tuple[Inputs, asyncio.Future[Embedded]]] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._opened = 0.0
        self.calls = 0
        """Engine calls made (for tests and metrics)."""

    async def embed(self, inputs: Inputs) -> Embedded:
        loop = asyncio.get_running_loop()
        if not self.engine.gathers_embeddings:
            self._called(len(inputs))
            return await loop.run_in_executor(self.pool, self.engine.embed, inputs)
        future: asyncio.Future[Embedded] = loop.create_future()
        self._batch.append((inputs, future))
        self._size += len(inputs)
        if not self._busy:
            if self._size >= self.max_inputs:
                self._send()
            else:  # wait for a pause in the arrivals, not beyond the longest wait
                if self._timer is None:
                    self._opened = loop.time()
                else:
                    self._timer.cancel()
                at = min(loop.time() + self.wait_s, self._opened + LONGEST * self.wait_s)
                self._timer = loop.call_at(at, self._send)
        return await future

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy or not self._batch:
            return
        batch: list[tuple[Inputs, asyncio.Future[Embedded]]] = []
        size = 0
        while self._batch and (not batch
                               or size + len(self._batch[0][0]) <= self.max_inputs):
            inputs, future = self._batch.pop(0)
            batch.append((inputs, future))
            size += len(inputs)
        self._size -= size
        everything = [item for inputs, _ in batch for item in inputs]
        self._called(len(everything))
        self._busy = True
        call = asyncio.get_running_loop().run_in_executor(self.pool, self.engine.embed,
                                                          everything)
        call.add_done_callback(lambda done: self._done(done, batch))

    def _done(self, done: asyncio.Future[Embedded],
              batch: list[tuple[Inputs, asyncio.Future[Embedded]]]) -> None:
        self._busy = False
        _share(done, batch)
        if self._batch:
            self._send()  # what gathered meanwhile goes now

    def _called(self, inputs: int) -> None:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(inputs)


def _share(done: asyncio.Future[Embedded],
           batch: list[tuple[Inputs, asyncio.Future[Embedded]]]) -> None:
    """Each request its vectors and its tokens, or the call's error."""
    error = done.exception()
    at = 0
    for inputs, future in batch:
        mine = slice(at, at + len(inputs))
        at += len(inputs)
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
            continue
        result = done.result()
        counts = result.per_input[mine] if result.per_input is not None else ()
        future.set_result(Embedded(result.vectors[mine], sum(counts), tuple(counts)))
