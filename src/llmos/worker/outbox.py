"""Reply chunks on their way to the gateways: one bus message per gateway per pass.

With many streams decoding in step, each engine step gives every stream a token at
once; sent one message per chunk, each token pays a publish, a broker round and a
decode. Here the chunks ready in one pass of the event loop go to each gateway as one
``ReplyBatch``; while a publish is in flight, the next chunks gather behind it (a slow
bus sends fewer, larger batches instead of falling behind). A request's final chunk goes
out with whatever of its gateway's is waiting, confirmed by the broker, before the
request is acked."""

from __future__ import annotations

import asyncio
import logging

from llmos.bus import Bus
from llmos.bus.messages import ReplyBatch, ReplyChunk, encode
from llmos.errors import BusError

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._waiting: dict[str, list[ReplyChunk]] = {}
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, reply_to: str, chunk: ReplyChunk) -> None:
        """Send ``chunk`` soon, with the others ready for the same gateway."""
        self._waiting.setdefault(reply_to, []).append(chunk)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    async def final(self, reply_to: str, chunk: ReplyChunk) -> None:
        """Send a request's last chunk now, with what waits for its gateway, and return
        once the broker has it (a gateway that is gone: logged, not raised)."""
        chunks = self._waiting.pop(reply_to, [])
        chunks.append(chunk)
        await self._publish(reply_to, chunks, confirm=True)

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batches, self._waiting = self._waiting, {}
                for reply_to, chunks in batches.items():
                    await self._publish(reply_to, chunks, confirm=False)
        finally:
            self._flushing = False

    async def _publish(self, reply_to: str, chunks: list[ReplyChunk], *, confirm: bool) -> None:
        try:
            await self._bus.publish(reply_to, encode(ReplyBatch.model_construct(chunks=chunks)),
                                    durable=False, confirm=confirm)
        except BusError as exc:
            # The gateway that asked is gone; nobody can receive these answers.
            log.warning("replies to %s lost: %s", reply_to, exc)

    async def close(self) -> None:
        """Send what waits (a worker that stops)."""
        while self._waiting or self._tasks or self._flushing:
            if self._waiting and not self._flushing:
                self._flushing = True
                self._start_flush()
            # (a flush scheduled but not started yet has no task: let it start)
            await asyncio.sleep(0)
            await asyncio.gather(*self._tasks, return_exceptions=True)
