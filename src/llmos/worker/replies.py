"""A request's answer on the bus: reply chunks numbered in order, to the gateway that
asked (through the worker's outbox), the final one confirmed by the broker before the
request is acked."""

from __future__ import annotations

import itertools
import time
from typing import Any

from llmos.bus.messages import InferenceRequest, ReplyChunk, Usage
from llmos.worker.outbox import Outbox


class Replies:
    def __init__(self, outbox: Outbox, request: InferenceRequest, attempt: int,
                 served_by: str | None = None) -> None:
        self._outbox = outbox
        self._served_by = served_by
        self._request = request
        self._attempt = attempt
        self._seq = itertools.count()
        self.usage: Usage | None = None
        """The usage the final chunk reported, once it is sent."""
        self.first_text_at: float | None = None
        """When (monotonic) the first chunk with text went out."""

    def _make(self, fields: dict[str, Any]) -> ReplyChunk:
        # (The hot path, one per chunk: pydantic's validating constructor, compiled, is
        # about 3x faster here than model_construct, which resolves every default in
        # Python.)
        seq = next(self._seq)
        if seq == 0 and self._served_by is not None:
            fields["served_by"] = self._served_by  # (the gateway learns where it runs)
        message = ReplyChunk(request_id=self._request.request_id, attempt=self._attempt,
                             seq=seq, **fields)
        if self.first_text_at is None and message.text:
            self.first_text_at = time.monotonic()
        return message

    def add(self, **fields: Any) -> None:
        """A chunk that is not the last: it goes out with the next batch."""
        self._outbox.add(self._request.reply_to, self._make(fields))

    async def chunk(self, **fields: Any) -> None:
        """A chunk sent before this returns: the last one (``final=True``) waits for the
        broker's confirm, so that the request is acked only once its answer is safe."""
        if fields.get("final") and self._served_by is not None:
            fields["served_by"] = self._served_by  # (and where its prefixes are now)
        message = self._make(fields)
        if message.usage is not None:
            self.usage = message.usage
        if message.final:
            await self._outbox.final(self._request.reply_to, message)
        else:
            self._outbox.add(self._request.reply_to, message)
