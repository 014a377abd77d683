"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmos.bus import names
from llmos.bus.messages import ErrorInfo, ReplyChunk
from llmos.errors import BadRequest, LLMOSError, NoReplica, UnsupportedParameter
from llmos.gateway.body import component_ref, openapi_body, parse_body
from llmos.gateway.deps import StateDep
from llmos.gateway.dispatch import RequestHandle
from llmos.gateway.errors import error_body, error_response, sse_error
from llmos.gateway.limits import check_request
from llmos.gateway.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreate,
    Completion,
    CompletionChunk,
    CompletionCreate,
    ErrorResponse,
    ModelList,
    ModelPublic,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)
from llmos.gateway.sse import END, SseResponse
from llmos.gateway.state import GatewayState, no_replica_message
from llmos.observability import metrics

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [(400, "invalid request"), (404, "unknown model"),
                         (429, "too many waiting requests (see Retry-After)"),
                         (500, "engine failure"), (503, "not available")]
}


def _events(chunk: type[ChatCompletionChunk | CompletionChunk]) -> dict[str, Any]:
    """A stream's content: server-sent events, each ``data:`` one chunk (``itemSchema``:
    the sequential media type form of OpenAPI 3.2), then ``data: [DONE]``."""
    return {"text/event-stream": {
        "schema": {"type": "string", "description": "server-sent events: `data: <"
                   f"{chunk.__name__} as JSON>` lines, each followed by a blank line, then "
                   "`data: [DONE]` (with `stream: true`)"},
        "itemSchema": component_ref(chunk)}}


T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["openai"], responses=_ERRORS)


@router.get("/models", response_model=ModelList)
async def list_models(state: StateDep) -> ModelList:
    deployments = await state.catalog.deployments()
    return ModelList(data=[
        ModelPublic(id=model_id, created=int(d.created_at.timestamp()), owned_by=d.project)
        for d in deployments for model_id in (d.name, *(d.aliases or []))
    ])


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": _events(ChatCompletionChunk)}},
             openapi_extra=openapi_body(ChatCompletionCreate))
async def create_chat_completion(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ChatCompletionCreate)
    engine_body: dict[str, Any] = {
        "messages": [{"role": m.role if m.role != "developer" else "system",
                      "content": m.text()} for m in body.messages],
    }
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJsonObject):
        engine_body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, ResponseFormatJsonSchema):
        engine_body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.json_schema.name, "schema": fmt.json_schema.schema_}}
    return await _run(state, request, "chat", body, body.requested_max_tokens(), engine_body)


@router.post("/completions", response_model=Completion,
             responses={200: {"content": _events(CompletionChunk)}},
             openapi_extra=openapi_body(CompletionCreate))
async def create_completion(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, CompletionCreate)
    prompt: Any = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    return await _run(state, request, "completion", body, body.requested_max_tokens(),
                      {"prompt": prompt})


FAST_ROUTES = {
    ("POST", "/v1/chat/completions"): create_chat_completion,
    ("POST", "/v1/completions"): create_completion,
}
"""The hot endpoints, which the gateway's FastRoutes middleware calls directly."""


async def _run(state: GatewayState, request: Request, kind: Literal["chat", "completion"],
               body: ChatCompletionCreate | CompletionCreate, max_tokens: int | None,
               engine_body: dict[str, Any]) -> Response:
    endpoint = "chat" if kind == "chat" else "completions"
    started = time.perf_counter()
    check_request(body, state.settings.limits)
    deployment = await state.catalog.get(body.model)
    unsupported = body.unsupported()
    if unsupported is not None:
        raise UnsupportedParameter(
            f"the parameter {unsupported!r} is not supported by this model's engine"
            + (" (only n=1)" if unsupported == "n" else ""), param=unsupported)
    limits = state.engine_settings(deployment)
    explicit = max_tokens is not None
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    elif max_tokens > limits.max_tokens_limit:
        raise BadRequest(f"max_tokens is {max_tokens} but this server allows at most "
                         f"{limits.max_tokens_limit}", param="max_tokens")
    if not await state.workers.wait_for_replica(deployment.name,
                                                state.replica_wait_s(deployment)):
        raise NoReplica(no_replica_message(deployment))
    engine_body |= limits.sampling.given() | body.sampling()
    engine_body["max_tokens"] = max_tokens
    request_id: str = request.scope["state"]["request_id"]
    handle = await state.dispatcher.submit(
        request_id=request_id, deployment=deployment.name, kind=kind, body=engine_body,
        stream=body.stream, max_tokens_explicit=explicit, project=deployment.project,
        tier=body.tier())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        response = await _stream(handle, request, kind, body.model, include_usage)
    else:
        response = await _complete(handle, request, kind, body.model)
    metrics.GATEWAY_REQUESTS.labels(endpoint, str(response.status_code)).inc()
    metrics.GATEWAY_LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    return response


def _error_json(error: ErrorInfo) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.type, param=error.param,
                                   code=error.code), status_code=error.status)


async def _complete(handle: RequestHandle, request: Request,
                    kind: Literal["chat", "completion"], model: str) -> Response:
    chunks = handle.chunks()
    try:
        final = await _unless_gone(_last_chunk(chunks), request)
    except LLMOSError as exc:
        return error_response(exc)
    if final is None:
        await chunks.aclose()
        return Response(status_code=499)
    if final.error is not None:
        return _error_json(final.error)
    usage = final.usage.model_dump() if final.usage else _no_usage()
    rid = handle.request.request_id
    created = int(time.time())
    if kind == "chat":
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created,
            "model": model, "choices": [{"index": 0, "finish_reason": final.finish_reason,
                                         "message": {"role": "assistant", "content": final.text},
                                         "logprobs": None}],
            "usage": usage}
    else:
        answer = {
            "id": f"cmpl-{rid}", "object": "text_completion", "created": created,
            "model": model, "choices": [{"index": 0, "text": final.text, "logprobs": None,
                                         "finish_reason": final.finish_reason}],
            "usage": usage}
    return JSONResponse(answer, headers={names.HEADER_ATTEMPT: str(handle.attempt)})


async def _last_chunk(chunks: AsyncIterator[ReplyChunk]) -> ReplyChunk:
    last: ReplyChunk | None = None
    async for chunk in chunks:
        last = chunk
    assert last is not None
    return last


async def _client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _no_usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def _unless_gone(work: Awaitable[T], request: Request) -> T | None:
    """``work``'s result, or None when the client went away first (then ``work`` is
    cancelled: a request iterator that closes cancels its request on the workers, in
    whatever phase it is, tokenization and prefill included)."""
    done = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_client_gone(request))
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


async def _stream(handle: RequestHandle, request: Request, kind: Literal["chat", "completion"],
                  model: str, include_usage: bool) -> Response:
    chunks = handle.chunks()
    # Wait for the first chunk before answering, so an error that comes before any
    # token (bad input, context too long) still gets its proper HTTP status.
    try:
        first = await _unless_gone(anext(chunks), request)
    except LLMOSError as exc:
        await chunks.aclose()
        return error_response(exc)
    if first is None:
        await chunks.aclose()
        return Response(status_code=499)
    if first.error is not None:
        await chunks.aclose()
        return _error_json(first.error)
    events = _SseEncoder(kind, handle.request.request_id, model)

    async def body() -> AsyncIterator[bytes]:
        # One piece per chunk (the events of one chunk go out in one write).
        try:
            piece = (events.event({"role": "assistant", "content": ""}, None)
                     if kind == "chat" else b"")
            chunk = first
            while True:
                if chunk.error is not None:
                    yield piece + events.error(chunk.error)
                    return
                if chunk.text:
                    piece += events.event(chunk.text if kind == "completion"
                                          else {"content": chunk.text}, None)
                if chunk.final:
                    piece += events.event("" if kind == "completion" else {},
                                          chunk.finish_reason)
                    if include_usage:
                        piece += events.usage(chunk.usage.model_dump() if chunk.usage
                                              else _no_usage())
                    yield piece + END
                    return
                if piece:
                    yield piece
                    piece = b""
                try:
                    chunk = await anext(chunks)
                except ClientGone:
                    return
                except LLMOSError as exc:
                    yield sse_error(exc)
                    return
        finally:
            await chunks.aclose()

    return SseResponse(body(), headers={names.HEADER_ATTEMPT: str(handle.attempt)},
                       on_disconnect=lambda: handle.fail(ClientGone("the client went away")))


class ClientGone(LLMOSError):
    """The client closed the connection: the stream ends and the generation is cancelled."""

    status = 499
    code = "client_closed_request"


class _SseEncoder:
    def __init__(self, kind: Literal["chat", "completion"], request_id: str, model: str) -> None:
        self.kind = kind
        self.base: dict[str, Any] = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def event(self, delta: Any, finish_reason: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
        if self.kind == "chat":
            choice["delta"] = delta
        else:
            choice["text"] = delta
            choice["logprobs"] = None
        return b"data: " + json.dumps(self.base | {"choices": [choice]}).encode() + b"\n\n"

    def error(self, error: ErrorInfo) -> bytes:
        body = error_body(error.message, error.type, param=error.param, code=error.code)
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def usage(self, usage: dict[str, int]) -> bytes:
        body = self.base | {"choices": [], "usage": usage}
        return b"data: " + json.dumps(body).encode() + b"\n\n"
