"""``n`` > 1: several choices of one prompt, one request each, answered as one.

Each choice is its own generation in its own slot (and, with a seed, its own seed);
the answer lists them by ``index``. Usage counts the prompt once, as OpenAI does, and
the tokens of every choice. A stream interleaves the choices' chunks as they come,
each tagged with its index, and ends after the last choice ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from llmos.bus import names
from llmos.bus.messages import ReplyChunk
from llmos.errors import LLMOSError
from llmos.gateway.answers import (
    ClientGone,
    Shape,
    SseEncoder,
    error_json,
    last_chunk,
    unless_gone,
)
from llmos.gateway.dispatch import RequestHandle
from llmos.gateway.errors import error_response, sse_error
from llmos.gateway.middleware import note
from llmos.gateway.sse import END, SseResponse

T = TypeVar("T")


def _usage(finals: list[ReplyChunk], request: Request) -> dict[str, int]:
    """Usage of every choice (the prompt once), also noted for the request's log line."""
    prompt = max((f.usage.prompt_tokens for f in finals if f.usage), default=0)
    completion = sum(f.usage.completion_tokens for f in finals if f.usage)
    note(request, prompt_tokens=prompt, completion_tokens=completion, choices=len(finals))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _request_id(handles: list[RequestHandle]) -> str:
    return handles[0].request.request_id.rsplit(".", 1)[0]


async def _all(awaitables: list[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure with the others cancelled (``gather`` would
    leave them waiting on answers nobody reads)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return [t.result() for t in tasks]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, LLMOSError, StopAsyncIteration):
                await task


async def _close(handles: list[RequestHandle]) -> None:
    await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)


async def _each(handles: list[RequestHandle], request: Request,
                awaitables: list[Awaitable[ReplyChunk]]) -> list[ReplyChunk] | Response:
    """A chunk of every choice, or the error answer (with every choice stopped) when one
    failed, answered an error, or the client left first."""
    try:
        chunks = await unless_gone(_all(awaitables), request)
    except LLMOSError as exc:
        await _close(handles)
        return error_response(exc)
    if chunks is None:
        await _close(handles)
        return Response(status_code=499)
    error = next((c.error for c in chunks if c.error is not None), None)
    if error is not None:
        await _close(handles)
        return error_json(error)
    return chunks


async def complete(handles: list[RequestHandle], request: Request, shape: Shape) -> Response:
    streams = [h.chunks() for h in handles]
    finals = await _each(handles, request, [last_chunk(c) for c in streams])
    if isinstance(finals, Response):
        return finals
    answer = shape.answer(_request_id(handles), finals, _usage(finals, request))
    attempt = max(h.attempt for h in handles)
    return JSONResponse(answer, headers={names.HEADER_ATTEMPT: str(attempt)})


async def stream(handles: list[RequestHandle], request: Request, shape: Shape,
                 include_usage: bool) -> Response:
    streams = [h.chunks() for h in handles]
    # the first chunk of every choice before answering: an error that comes before any
    # token (the prompt too long, say) still gets its HTTP status
    firsts = await _each(handles, request, [anext(c) for c in streams])
    if isinstance(firsts, Response):
        return firsts
    events = SseEncoder(shape.kind, _request_id(handles), shape.model)
    readers = [shape.reader() for _ in handles]
    merged: asyncio.Queue[tuple[int, ReplyChunk | LLMOSError]] = asyncio.Queue()

    async def pump(index: int, chunks: AsyncIterator[ReplyChunk], first: ReplyChunk) -> None:
        await merged.put((index, first))
        if first.final:
            return
        try:
            async for chunk in chunks:
                await merged.put((index, chunk))
        except LLMOSError as exc:
            await merged.put((index, exc))

    async def body() -> AsyncIterator[bytes]:
        pumps = [asyncio.create_task(pump(i, c, f))
                 for i, (c, f) in enumerate(zip(streams, firsts, strict=True))]
        finals: list[ReplyChunk] = []
        try:
            piece = b"".join(shape.opening(events, i) for i in range(len(handles)))
            while len(finals) < len(handles):
                index, chunk = await merged.get()
                if isinstance(chunk, ClientGone):
                    return
                if isinstance(chunk, LLMOSError):
                    yield piece + sse_error(chunk)
                    return
                if chunk.error is not None:
                    yield piece + events.error(chunk.error)
                    return
                piece += shape.events(events, chunk, readers[index], index)
                if chunk.final:
                    finals.append(chunk)
                if piece and merged.empty():  # (chunks that came meanwhile join it)
                    yield piece
                    piece = b""
            usage = _usage(finals, request)
            if include_usage:
                piece += events.usage(usage)
            yield piece + END
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError, LLMOSError):
                    await task
            for chunks in streams:
                with contextlib.suppress(LLMOSError, RuntimeError):
                    await chunks.aclose()

    def gone() -> None:
        for handle in handles:
            handle.fail(ClientGone("the client went away"))

    return SseResponse(body(), headers={
        names.HEADER_ATTEMPT: str(max(h.attempt for h in handles))}, on_disconnect=gone)
