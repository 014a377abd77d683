"""A request's answer on the bus: reply chunks numbered in order, to the gateway that
asked, the final one confirmed by the broker before the request is acked."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from llmos.bus import Bus, names
from llmos.bus.messages import InferenceRequest, ReplyChunk, Usage, encode
from llmos.errors import BusError

log = logging.getLogger(__name__)


class Replies:
    def __init__(self, bus: Bus, request: InferenceRequest, attempt: int) -> None:
        self._bus = bus
        self._request = request
        self._attempt = attempt
        self._seq = itertools.count()
        self.usage: Usage | None = None
        """The usage the final chunk reported, once it is sent."""
        self.first_text_at: float | None = None
        """When (monotonic) the first chunk with text went out."""
        self._headers: Mapping[str, str] = {names.HEADER_REQUEST_ID: request.request_id}

    async def chunk(self, **fields: Any) -> None:
        # Built without validation (the hot path: one per chunk); every field comes from
        # this package's typed code, and the gateway validates what it decodes.
        message = ReplyChunk.model_construct(request_id=self._request.request_id,
                                             attempt=self._attempt, seq=next(self._seq),
                                             **fields)
        if message.usage is not None:
            self.usage = message.usage
        if self.first_text_at is None and message.text:
            self.first_text_at = time.monotonic()
        try:
            # The final chunk waits for the broker's confirm: the request is acked only
            # once its answer is safely with the broker.
            await self._bus.publish(self._request.reply_to, encode(message),
                                    headers=self._headers, durable=False,
                                    confirm=message.final)
        except BusError as exc:
            # The gateway that asked is gone; nobody can receive this answer.
            log.warning("reply to %s lost: %s", self._request.reply_to, exc)
