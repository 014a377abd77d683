"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions,
/v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmos import capabilities
from llmos.auth.roles import Role
from llmos.bus import names
from llmos.capabilities import require
from llmos.errors import BadRequest, LLMOSError, UnsupportedParameter
from llmos.gateway.answers import (
    ClientGone,
    Shape,
    SseEncoder,
    final_or_error,
    first_or_error,
    no_usage,
    note_usage,
)
from llmos.gateway.auth import inference_project, requires
from llmos.gateway.body import component_ref, openapi_body, parse_body
from llmos.gateway.deps import StateDep
from llmos.gateway.dispatch import RequestHandle
from llmos.gateway.errors import sse_error
from llmos.gateway.intake import admit, chat_request, meter, replica_for
from llmos.gateway.middleware import note
from llmos.gateway.routes import choices
from llmos.gateway.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreate,
    Completion,
    CompletionChunk,
    CompletionCreate,
    EmbeddingCreate,
    EmbeddingList,
    EmbeddingPublic,
    EmbeddingUsage,
    ErrorResponse,
    ModelList,
    ModelPublic,
)
from llmos.gateway.sse import END, SseResponse
from llmos.gateway.state import GatewayState
from llmos.observability import metrics
from llmos.store import Deployment

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
@requires(Role.user)
async def list_models(request: Request, state: StateDep) -> ModelList:
    """The model ids of the project's deployments (names and aliases)."""
    deployments = await state.catalog.deployments(inference_project(request.scope))
    return ModelList(data=[_model(state, d, model_id) for d in deployments
                           for model_id in (d.name, *(d.aliases or []))])


def _model(state: GatewayState, d: Deployment, model_id: str) -> ModelPublic:
    able = capabilities.of(d.engine, embedding=state.engine_settings(d).embedding)
    return ModelPublic(id=model_id, created=int(d.created_at.timestamp()), owned_by=d.project,
                       capabilities=list(capabilities.listed(able)), engine=d.engine)


@router.get("/models/{model_id:path}", response_model=ModelPublic)
@requires(Role.user)
async def retrieve_model(model_id: str, request: Request, state: StateDep) -> ModelPublic:
    """One model id (a deployment's name or alias), as ``client.models.retrieve`` reads it."""
    d = await state.catalog.get(model_id, inference_project(request.scope))
    return _model(state, d, model_id)


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": _events(ChatCompletionChunk)}},
             openapi_extra=openapi_body(ChatCompletionCreate))
@requires(Role.user)
async def create_chat_completion(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, ChatCompletionCreate)
    engine_body, shape = chat_request(body)
    return await _run(state, request, shape, body, body.requested_max_tokens(), engine_body)


@router.post("/completions", response_model=Completion,
             responses={200: {"content": _events(CompletionChunk)}},
             openapi_extra=openapi_body(CompletionCreate))
@requires(Role.user)
async def create_completion(request: Request, state: StateDep) -> Response:
    body = await parse_body(request, CompletionCreate)
    prompt: Any = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    engine_body: dict[str, Any] = {"prompt": prompt}
    if body.logprobs is not None:
        engine_body["logprobs"] = body.logprobs
    echo = ""
    if body.echo:
        if not isinstance(prompt, str):
            raise UnsupportedParameter("echo is supported with a text prompt, not token ids",
                                       param="echo")
        if body.logprobs is not None:
            raise UnsupportedParameter("echo cannot be combined with logprobs (the prompt's "
                                       "log probabilities are not computed)", param="echo")
        echo = prompt
    shape = Shape("completion", body.model, echo=echo)
    return await _run(state, request, shape, body, body.requested_max_tokens(), engine_body)


@router.post("/embeddings", response_model=EmbeddingList,
             openapi_extra=openapi_body(EmbeddingCreate))
@requires(Role.user)
async def create_embeddings(request: Request, state: StateDep) -> Response:
    """Embed a text or many (or token ids): the vectors, in order, each of unit length;
    ``base64`` gives each as little-endian float32 (the official client's default)."""
    started = time.perf_counter()
    body = await parse_body(request, EmbeddingCreate)
    inputs = body.inputs()
    limits = state.settings.limits
    if len(inputs) > limits.max_embedding_inputs:
        raise BadRequest(f"{len(inputs)} inputs, but a request may have at most "
                         f"{limits.max_embedding_inputs} (limits.max_embedding_inputs)",
                         param="input")
    deployment = await state.catalog.get(body.model, inference_project(request.scope))
    note(request, deployment=deployment.name, project=deployment.project)
    settings = state.engine_settings(deployment)
    require("embeddings", capabilities.of(deployment.engine, embedding=settings.embedding),
            body.model)
    if body.dimensions is not None and body.dimensions not in settings.embedding_dimensions:
        sizes = ", ".join(map(str, settings.embedding_dimensions)) or "none"
        raise BadRequest(f"the model {body.model!r} was not trained to be cut to "
                         f"{body.dimensions} dimensions (its sizes: {sizes}; the deployment's "
                         "engine setting embedding_dimensions)", param="dimensions")
    await meter(state, request, deployment.project, 0)
    await replica_for(state, request, deployment)
    handle = await state.dispatcher.submit(
        request_id=request.scope["state"]["request_id"], deployment=deployment.name,
        kind="embedding", body={"input": inputs, "dimensions": body.dimensions},
        stream=False, max_tokens_explicit=False, project=deployment.project)
    final = await final_or_error(handle.chunks(), request)
    if isinstance(final, Response):
        response = final
    else:
        note_usage(request, final)
        tokens = final.usage.prompt_tokens if final.usage else 0
        vectors = final.embeddings or []
        answer = EmbeddingList(model=body.model, usage=EmbeddingUsage(
            prompt_tokens=tokens, total_tokens=tokens), data=[
            EmbeddingPublic(index=i, embedding=v if body.encoding_format == "base64"
                            else _floats(v)) for i, v in enumerate(vectors)])
        response = JSONResponse(answer.model_dump(),
                                headers={names.HEADER_ATTEMPT: str(handle.attempt)})
    metrics.GATEWAY_REQUESTS.labels("embeddings", str(response.status_code)).inc()
    metrics.GATEWAY_LATENCY.labels("embeddings").observe(time.perf_counter() - started)
    return response


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


FAST_ROUTES = {
    ("POST", "/v1/chat/completions"): create_chat_completion,
    ("POST", "/v1/completions"): create_completion,
}
"""The hot endpoints, which the gateway's FastRoutes middleware calls directly."""


async def _run(state: GatewayState, request: Request, shape: Shape,
               body: ChatCompletionCreate | CompletionCreate, max_tokens: int | None,
               engine_body: dict[str, Any]) -> Response:
    kind = shape.kind
    endpoint = "chat" if kind == "chat" else "completions"
    started = time.perf_counter()
    deployment, explicit = await admit(state, request, body, max_tokens, engine_body)
    request_id: str = request.scope["state"]["request_id"]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    response: Response
    if body.n is not None and body.n > 1:
        handles = await _submit_choices(state, request_id, deployment.name, kind, engine_body,
                                        body, explicit, deployment.project, body.n)
        response = await (choices.stream(handles, request, shape, include_usage)
                          if body.stream else choices.complete(handles, request, shape))
    else:
        handle = await state.dispatcher.submit(
            request_id=request_id, deployment=deployment.name, kind=kind, body=engine_body,
            stream=body.stream, max_tokens_explicit=explicit, project=deployment.project,
            tier=body.tier())
        response = await (_stream(handle, request, shape, include_usage)
                          if body.stream else _complete(handle, request, shape))
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


async def _complete(handle: RequestHandle, request: Request, shape: Shape) -> Response:
    final = await final_or_error(handle.chunks(), request)
    if isinstance(final, Response):
        return final
    answer = shape.answer(handle.request.request_id, [final],
                          final.usage.model_dump() if final.usage else no_usage())
    return JSONResponse(answer, headers={names.HEADER_ATTEMPT: str(handle.attempt)})


async def _stream(handle: RequestHandle, request: Request, shape: Shape,
                  include_usage: bool) -> Response:
    chunks = handle.chunks()
    first = await first_or_error(chunks, request)
    if isinstance(first, Response):
        return first
    events = SseEncoder(shape.kind, handle.request.request_id, shape.model)
    reader = shape.reader()

    async def body() -> AsyncIterator[bytes]:
        # One write per chunk, or for all the chunks that arrived while the last write
        # waited (a slow reader, a busy loop): tokens that pile up travel together.
        try:
            piece = shape.opening(events)
            chunk = first
            while True:
                if chunk.error is not None:
                    yield piece + events.error(chunk.error)
                    return
                piece += shape.events(events, chunk, reader)
                if chunk.final:
                    note_usage(request, chunk)
                    if include_usage:
                        piece += events.usage(chunk.usage.model_dump() if chunk.usage
                                              else no_usage())
                    yield piece + END
                    return
                if piece and not handle.ready():  # (what has come meanwhile joins it)
                    yield piece
                    piece = b""
                try:
                    chunk = await anext(chunks)
                except ClientGone:
                    return
                except LLMOSError as exc:
                    yield piece + sse_error(exc)
                    return
        finally:
            await chunks.aclose()

    return SseResponse(body(), headers={names.HEADER_ATTEMPT: str(handle.attempt)},
                       on_disconnect=lambda: handle.fail(ClientGone("the client went away")))


