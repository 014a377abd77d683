"""``POST /v1/responses``: the Responses API (text and function calls), stateless."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llmos.auth.roles import Role
from llmos.bus import names
from llmos.bus.messages import ErrorInfo, ReplyChunk
from llmos.errors import LLMOSError, UnsupportedParameter
from llmos.gateway.answers import ClientGone, final_or_error, first_or_error, note_usage
from llmos.gateway.auth import requires
from llmos.gateway.body import openapi_body, parse_body
from llmos.gateway.deps import StateDep
from llmos.gateway.intake import admit, chat_request
from llmos.gateway.responses import ResponseWriter, sse, to_chat
from llmos.gateway.schemas import ErrorResponse
from llmos.gateway.schemas_responses import NOT_STORED, ResponseCreate
from llmos.gateway.sse import SseResponse
from llmos.observability import metrics

router = APIRouter(prefix="/v1", tags=["openai"], responses={
    status: {"model": ErrorResponse, "description": text}
    for status, text in [(400, "invalid request"), (404, "unknown model"),
                         (429, "too many waiting requests (see Retry-After)"),
                         (500, "engine failure"), (503, "not available")]})


@router.post("/responses", openapi_extra=openapi_body(ResponseCreate), responses={200: {
    "description": "the response object, or with `stream: true` server-sent events, each "
                   "`event: <type>` and `data: <the event as JSON>` (`response.created`, "
                   "`response.output_text.delta`, …, `response.completed`)",
    "content": {"application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}}}}})
@requires(Role.user)
async def create_response(request: Request, state: StateDep) -> Response:
    started = time.perf_counter()
    body = await parse_body(request, ResponseCreate)
    unsupported = body.unsupported()
    if unsupported is not None:
        reason = (NOT_STORED if unsupported in ("previous_response_id", "store", "conversation")
                  else "it is not supported")
        raise UnsupportedParameter(f"the parameter {unsupported!r} cannot be used: {reason}",
                                   param=unsupported)
    chat = to_chat(body)
    engine_body, shape = chat_request(chat)
    deployment, explicit = await admit(state, request, chat, chat.requested_max_tokens(),
                                       engine_body)
    request_id: str = request.scope["state"]["request_id"]
    handle = await state.dispatcher.submit(
        request_id=request_id, deployment=deployment.name, kind="chat", body=engine_body,
        stream=body.stream, max_tokens_explicit=explicit, project=deployment.project,
        tier=chat.tier())
    reader = shape.reader()
    assert reader is not None
    writer = ResponseWriter(body, request_id, reader)
    headers = {names.HEADER_ATTEMPT: str(handle.attempt)}
    response: Response
    chunks = handle.chunks()
    if not body.stream:
        final = await final_or_error(chunks, request)
        if isinstance(final, Response):
            response = final
        else:
            events = writer.feed(final)
            response = JSONResponse(events[-1]["response"], headers=headers)
    else:
        first = await first_or_error(chunks, request)
        if isinstance(first, Response):
            response = first
        else:
            response = SseResponse(
                _events(writer, first, chunks, request, handle.ready), headers=headers,
                on_disconnect=lambda: handle.fail(ClientGone("the client went away")))
    metrics.GATEWAY_REQUESTS.labels("responses", str(response.status_code)).inc()
    metrics.GATEWAY_LATENCY.labels("responses").observe(time.perf_counter() - started)
    return response


async def _events(writer: ResponseWriter, first: ReplyChunk,
                  chunks: AsyncGenerator[ReplyChunk, None],
                  request: Request, ready: Callable[[], bool]) -> AsyncIterator[bytes]:
    try:
        piece = b"".join(sse(e) for e in writer.opening())
        chunk = first
        while True:
            if chunk.error is not None:
                yield piece + sse(writer.error(chunk.error))
                return
            piece += b"".join(sse(e) for e in writer.feed(chunk))
            if chunk.final:
                note_usage(request, chunk)
                yield piece
                return
            if piece and not ready():  # (chunks that came meanwhile join it)
                yield piece
                piece = b""
            try:
                chunk = await anext(chunks)
            except ClientGone:
                return
            except LLMOSError as exc:
                yield piece + sse(writer.error(ErrorInfo(status=exc.status, type=exc.type,
                                                 message=exc.message, param=exc.param,
                                                 code=exc.code)))
                return
    finally:
        await chunks.aclose()
