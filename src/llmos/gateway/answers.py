"""What the OpenAI endpoints share to turn reply chunks into answers: the wait that a
client's disconnect cuts short, the SSE encoding, and errors as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from llmos.bus.messages import ErrorInfo, ReplyChunk, TokenLogprob
from llmos.errors import LLMOSError
from llmos.gateway.errors import error_body, error_response
from llmos.gateway.middleware import note
from llmos.gateway.toolcalls import CallReader, ToolMode, assembled, delta_json

T = TypeVar("T")

PLAIN = ToolMode(forced=False, parallel=True)


@dataclass(frozen=True)
class Shape:
    """How a request's answer is written: its endpoint, model name, tool calls, echo."""

    kind: Literal["chat", "completion"]
    model: str
    tools: ToolMode = PLAIN
    echo: str = ""
    """Completions: the prompt, to put before each choice's text."""

    def reader(self) -> CallReader | None:
        """A choice's reader of text and calls (chat only)."""
        return self.tools.reader() if self.kind == "chat" else None

    def answer(self, request_id: str, finals: list[ReplyChunk],
               usage: dict[str, int]) -> dict[str, Any]:
        """A whole non-streamed answer: its choices from their final chunks."""
        chat = self.kind == "chat"
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model,
                "choices": [self.choice(i, f) for i, f in enumerate(finals)], "usage": usage}

    def choice(self, index: int, final: ReplyChunk) -> dict[str, Any]:
        """A whole choice of a non-streamed answer, from its final chunk."""
        reader = self.reader()
        if reader is None:
            return {"index": index, "text": self.echo + final.text,
                    "logprobs": completion_logprobs(final.logprobs),
                    "finish_reason": final.finish_reason}
        text, pieces = reader.read(final)
        message: dict[str, Any] = {"role": "assistant",
                                   "content": text if text or not pieces else None}
        if pieces:
            message["tool_calls"] = assembled(pieces)
        return {"index": index, "finish_reason": reader.finish_reason(final.finish_reason),
                "message": message, "logprobs": chat_logprobs(final.logprobs)}

    def opening(self, events: SseEncoder, index: int = 0) -> bytes:
        """A streamed choice's first event: the role (chat), or the echoed prompt."""
        if self.kind == "chat":
            return events.event({"role": "assistant", "content": ""}, None, index=index)
        return events.event(self.echo, None, index=index) if self.echo else b""

    def events(self, events: SseEncoder, chunk: ReplyChunk, reader: CallReader | None,
               index: int = 0) -> bytes:
        """The events of one chunk of a streamed choice: its text or calls, and its end."""
        out = b""
        if reader is not None:
            text, pieces = reader.read(chunk)
            if text and not pieces and not chunk.logprobs:
                out += events.text(text, index)
            elif text or pieces or chunk.logprobs:
                delta: dict[str, Any] = {"content": text} if text or not pieces else {}
                if pieces:
                    delta["tool_calls"] = delta_json(pieces)
                out += events.event(delta, None, index=index, logprobs=chunk.logprobs)
        elif chunk.text and not chunk.logprobs:
            out += events.text(chunk.text, index)
        elif chunk.logprobs:
            out += events.event(chunk.text, None, index=index, logprobs=chunk.logprobs)
        if chunk.final:
            out += events.event(
                {} if reader is not None else "",
                reader.finish_reason(chunk.finish_reason) if reader is not None
                else chunk.finish_reason, index=index)
        return out


def error_json(error: ErrorInfo) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.type, param=error.param,
                                   code=error.code), status_code=error.status)


async def last_chunk(chunks: AsyncIterator[ReplyChunk]) -> ReplyChunk:
    last: ReplyChunk | None = None
    async for chunk in chunks:
        last = chunk
    assert last is not None
    return last


async def client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def final_or_error(chunks: AsyncGenerator[ReplyChunk, None], request: Request
                         ) -> ReplyChunk | Response:
    """An answer's final chunk, or the response to send instead: its error, or 499 when
    the client went away first."""
    try:
        final = await unless_gone(last_chunk(chunks), request)
    except LLMOSError as exc:
        return error_response(exc)
    if final is None:
        await chunks.aclose()
        return Response(status_code=499)
    if final.error is not None:
        return error_json(final.error)
    note_usage(request, final)
    return final


def note_usage(request: Request, final: ReplyChunk) -> None:
    """The answer's tokens, for the request's log line."""
    if final.usage is not None:
        note(request, prompt_tokens=final.usage.prompt_tokens,
             completion_tokens=final.usage.completion_tokens)


async def first_or_error(chunks: AsyncGenerator[ReplyChunk, None], request: Request
                         ) -> ReplyChunk | Response:
    """A stream's first chunk, or the response to send instead. A stream waits for it
    before answering, so an error that comes before any token (bad input, context too
    long) still gets its proper HTTP status."""
    try:
        first = await unless_gone(anext(chunks), request)
    except LLMOSError as exc:
        await chunks.aclose()
        return error_response(exc)
    if first is None:
        await chunks.aclose()
        return Response(status_code=499)
    if first.error is not None:
        await chunks.aclose()
        return error_json(first.error)
    return first


def no_usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def unless_gone(work: Awaitable[T], request: Request) -> T | None:
    """``work``'s result, or None when the client went away first (then ``work`` is
    cancelled: a request iterator that closes cancels its request on the workers, in
    whatever phase it is, tokenization and prefill included)."""
    done = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({done, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not done.done():
            done.cancel()
            with contextlib.suppress(asyncio.CancelledError, LLMOSError, StopAsyncIteration):
                await done
    if done.cancelled():
        return None
    return done.result()


class ClientGone(LLMOSError):
    """The client closed the connection: the stream ends and the generation is cancelled."""

    status = 499
    code = "client_closed_request"


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: OpenAI's shape, one entry per token."""
    if entries is None:
        return None
    return {"content": [e.model_dump() for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | None, offset: int = 0
                        ) -> dict[str, Any] | None:
    """A completion choice's ``logprobs``: OpenAI's legacy shape (parallel lists, the
    alternatives as token -> logprob, offsets into the choice's text from ``offset``)."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            "text_offset": offsets}


class SseEncoder:
    def __init__(self, kind: Literal["chat", "completion"], request_id: str, model: str) -> None:
        self.kind = kind
        self.base: dict[str, Any] = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._offsets: dict[int, int] = {}
        """Per choice, where the next token starts in its text (completions' logprobs)."""
        self._text_events: dict[int, tuple[bytes, bytes]] = {}
        """Per choice, a text event's bytes before and after its text."""

    def text(self, text: str, index: int = 0) -> bytes:
        """A choice's event of plain text (the hot path: one per chunk of a stream):
        the same bytes as ``event``, with only the text encoded each time."""
        around = self._text_events.get(index)
        if around is None:
            marker = "\x00"
            whole = self.event({"content": marker} if self.kind == "chat" else marker, None,
                               index=index)
            before, _, after = whole.partition(json.dumps(marker).encode())
            around = self._text_events[index] = (before, after)
        return around[0] + json.dumps(text).encode() + around[1]

    def event(self, delta: Any, finish_reason: str | None, *, index: int = 0,
              logprobs: list[TokenLogprob] | None = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason}
        if self.kind == "chat":
            choice["delta"] = delta
            if logprobs:
                choice["logprobs"] = chat_logprobs(logprobs)
        else:
            choice["text"] = delta
            choice["logprobs"] = None
            if logprobs:
                offset = self._offsets.get(index, 0)
                choice["logprobs"] = completion_logprobs(logprobs, offset)
                self._offsets[index] = offset + sum(len(e.token) for e in logprobs)
        return b"data: " + json.dumps(self.base | {"choices": [choice]}).encode() + b"\n\n"

    def error(self, error: ErrorInfo) -> bytes:
        body = error_body(error.message, error.type, param=error.param, code=error.code)
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def usage(self, usage: dict[str, int]) -> bytes:
        body = self.base | {"choices": [], "usage": usage}
        return b"data: " + json.dumps(body).encode() + b"\n\n"
