"""SseResponse: one write per piece, and the last event goes out with the end of the body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmos.gateway.sse import END, SseResponse


async def pieces(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def run(response: SseResponse) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response({"type": "http"}, receive, send)
    return sent


@pytest.mark.asyncio
async def test_the_last_event_is_sent_with_the_end_of_the_body() -> None:
    sent = await run(SseResponse(pieces(b"data: 1\n\n", b"data: 2\n\n" + END),
                                 on_disconnect=lambda: None))
    assert sent[0]["type"] == "http.response.start"
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"data: 1\n\n", True), (b"data: 2\n\n" + END, False)]


@pytest.mark.asyncio
async def test_a_stream_that_stops_early_still_ends_its_body() -> None:
    sent = await run(SseResponse(pieces(b"data: 1\n\n"), on_disconnect=lambda: None))
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"data: 1\n\n", True), (b"", False)]
