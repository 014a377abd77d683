"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmos.bus import names
from llmos.errors import BadRequest, LLMOSError, NoReplica, UnsupportedParameter
from llmos.gateway.answers import (
    ClientGone,
    SseEncoder,
    chat_logprobs,
    completion_logprobs,
    error_json,
    last_chunk,
    no_usage,
    unless_gone,
)
from llmos.gateway.body import component_ref, openapi_body, parse_body
from llmos.gateway.deps import StateDep
from llmos.gateway.dispatch import RequestHandle
from llmos.gateway.errors import error_response, sse_error
from llmos.gateway.limits import check_request
from llmos.gateway.routes import choices
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
    if body.logprobs:
        engine_body |= {"logprobs": True, "top_logprobs": body.top_logprobs or 0}
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
    engine_body: dict[str, Any] = {"prompt": prompt}
    if body.logprobs is not None:
        engine_body["logprobs"] = body.logprobs
    return await _run(state, request, "completion", body, body.requested_max_tokens(),
                      engine_body)


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
            f"the parameter {unsupported!r} is not supported by this model's engine",
            param=unsupported)
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
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    response: Response
    if body.n is not None and body.n > 1:
        handles = await _submit_choices(state, request_id, deployment.name, kind, engine_body,
                                        body, explicit, deployment.project, body.n)
        response = await (choices.stream(handles, request, kind, body.model, include_usage)
                          if body.stream else
                          choices.complete(handles, request, kind, body.model))
    else:
        handle = await state.dispatcher.submit(
            request_id=request_id, deployment=deployment.name, kind=kind, body=engine_body,
            stream=body.stream, max_tokens_explicit=explicit, project=deployment.project,
            tier=body.tier())
        response = await (_stream(handle, request, kind, body.model, include_usage)
                          if body.stream else _complete(handle, request, kind, body.model))
    metrics.GATEWAY_REQUESTS.labels(endpoint, str(response.status_code)).inc()
    metrics.GATEWAY_LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    return response


async def _submit_choices(state: GatewayState, request_id: str, deployment: str,
                          kind: Literal["chat", "completion"], engine_body: dict[str, Any],
                          body: ChatCompletionCreate | CompletionCreate, explicit: bool,
                          project: str, n: int) -> list[RequestHandle]:
    """``n`` requests, one per choice (``ID.0`` … ``ID.n-1``); with a seed, choice i
    samples with seed + i. Completions that differ only so start together on a replica
    (one prefill batch) where its engine merges them."""
    handles: list[RequestHandle] = []
    try:
        for i in range(n):
            member = dict(engine_body)
            if member.get("seed") is not None:
                member["seed"] = int(member["seed"]) + i
            handles.append(await state.dispatcher.submit(
                request_id=f"{request_id}.{i}", deployment=deployment, kind=kind,
                body=member, stream=body.stream, max_tokens_explicit=explicit,
                project=project, tier=body.tier()))
    except BaseException:
        await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)
        raise
    return handles


async def _complete(handle: RequestHandle, request: Request,
                    kind: Literal["chat", "completion"], model: str) -> Response:
    chunks = handle.chunks()
    try:
        final = await unless_gone(last_chunk(chunks), request)
    except LLMOSError as exc:
        return error_response(exc)
    if final is None:
        await chunks.aclose()
        return Response(status_code=499)
    if final.error is not None:
        return error_json(final.error)
    usage = final.usage.model_dump() if final.usage else no_usage()
    rid = handle.request.request_id
    created = int(time.time())
    if kind == "chat":
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created,
            "model": model, "choices": [{"index": 0, "finish_reason": final.finish_reason,
                                         "message": {"role": "assistant", "content": final.text},
                                         "logprobs": chat_logprobs(final.logprobs)}],
            "usage": usage}
    else:
        answer = {
            "id": f"cmpl-{rid}", "object": "text_completion", "created": created,
            "model": model, "choices": [{"index": 0, "text": final.text,
                                         "logprobs": completion_logprobs(final.logprobs),
                                         "finish_reason": final.finish_reason}],
            "usage": usage}
    return JSONResponse(answer, headers={names.HEADER_ATTEMPT: str(handle.attempt)})


async def _stream(handle: RequestHandle, request: Request, kind: Literal["chat", "completion"],
                  model: str, include_usage: bool) -> Response:
    chunks = handle.chunks()
    # Wait for the first chunk before answering, so an error that comes before any
    # token (bad input, context too long) still gets its proper HTTP status.
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
    events = SseEncoder(kind, handle.request.request_id, model)

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
                if chunk.text or chunk.logprobs:
                    piece += events.event(chunk.text if kind == "completion"
                                          else {"content": chunk.text}, None,
                                          logprobs=chunk.logprobs)
                if chunk.final:
                    piece += events.event("" if kind == "completion" else {},
                                          chunk.finish_reason)
                    if include_usage:
                        piece += events.usage(chunk.usage.model_dump() if chunk.usage
                                              else no_usage())
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


