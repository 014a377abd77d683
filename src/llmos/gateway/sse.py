"""A server-sent-events response that stops its source when the client goes away.

Starlette's ``StreamingResponse`` watches for the disconnect through an anyio task
group with cancel scopes on every request; here one plain task waits for
``http.disconnect`` and calls ``on_disconnect``, which ends the source (the
gateway fails the request handle, so the generator finishes and cancels the
generation on the workers).

Each ``send`` is one write to the socket, and one wake-up of the client: the
events that are ready together come as one piece, and the piece that ends with
the stream's last event (``END``) goes out together with the end of the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmos.aio import stop_task

END = b"data: [DONE]\n\n"
"""The last event of an OpenAI stream."""


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        on_disconnect: Callable[[], None],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.events = events
        self.on_disconnect = on_disconnect
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The events are written from a task of their own: a task resumes every coroutine
        # it is awaiting, so a stream written from here would resume each middleware's
        # frame (a dozen) on every token; this one resumes two.
        writing = asyncio.ensure_future(self._write(send))
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await writing
        finally:
            await stop_task(writing)
            await stop_task(watcher)

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.on_disconnect()

    async def _write(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        last = b""
        async for piece in self.events:
            if piece.endswith(END):
                last = piece
                break
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": last, "more_body": False})
