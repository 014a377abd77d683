"""What every generation endpoint does before it queues a request: the checks, the
deployment, the engine's body."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request

from llmos import capabilities
from llmos.bus import names
from llmos.capabilities import require
from llmos.errors import BadRequest, NoReplica, RateLimited, UnsupportedParameter
from llmos.gateway import toolcalls
from llmos.gateway.answers import PLAIN, Shape
from llmos.gateway.auth import inference_project, principal_of
from llmos.gateway.limits import check_request
from llmos.gateway.metering import rate_headers
from llmos.gateway.middleware import note, on_end
from llmos.gateway.schemas import (
    ChatCompletionCreate,
    CompletionCreate,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)
from llmos.gateway.state import GatewayState, no_replica_message
from llmos.store import Deployment

TARPIT_S = 1.0
"""The most a 429 of a rate limit is held before it is sent."""


def chat_request(body: ChatCompletionCreate) -> tuple[dict[str, Any], Shape]:
    """The engine's body for a chat request, and how its answer is read."""
    engine_body: dict[str, Any] = {"messages": toolcalls.engine_messages(body)}
    if body.logprobs:
        engine_body |= {"logprobs": True, "top_logprobs": body.top_logprobs or 0}
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJsonObject):
        engine_body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, ResponseFormatJsonSchema):
        engine_body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.json_schema.name, "schema": fmt.json_schema.schema_}}
    tool_fields, mode = toolcalls.engine_fields(body)
    engine_body |= tool_fields  # (a forced call's schema replaces any response_format)
    return engine_body, Shape("chat", body.model, mode or PLAIN)


async def admit(state: GatewayState, request: Request,
                body: ChatCompletionCreate | CompletionCreate, max_tokens: int | None,
                engine_body: dict[str, Any]) -> tuple[Deployment, bool]:
    """Checks the request, finds its deployment and waits for a replica of it; completes
    ``engine_body`` with the sampling parameters and max_tokens. Returns the deployment,
    and whether max_tokens was the client's."""
    check_request(body, state.settings.limits)
    deployment = await state.catalog.get(body.model, inference_project(request.scope))
    note(request, deployment=deployment.name, project=deployment.project)
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
    require("chat" if isinstance(body, ChatCompletionCreate) else "completions",
            capabilities.of(deployment.engine, embedding=limits.embedding), body.model)
    await meter(state, request, deployment.project, max_tokens * (body.n or 1))
    await replica_for(state, request, deployment)
    engine_body |= limits.sampling.given() | body.sampling()
    engine_body["max_tokens"] = max_tokens
    return deployment, explicit


async def replica_for(state: GatewayState, request: Request, deployment: Deployment
                      ) -> None:
    """Count the request for the autoscaler and wait for a replica of ``deployment``
    (a 503 when none comes in time)."""
    bus_name = names.bus_name(deployment.name, deployment.project)
    serving = state.workers.serving(bus_name)
    on_end(request, state.traffic.arrive(deployment.project, deployment.name,
                                         urgent=not serving))
    if serving:
        return
    short = state.settings.limits.no_replica_wait_s
    if await state.workers.wait_for_replica(bus_name, short):
        return
    # Longer only while a replica is starting (or the deployment scales from zero), as
    # the store says now: the catalog's cache may be from before a quiet spell, when a
    # replica that is ready (or drained) now was starting.
    await state.catalog.current()
    longer = state.replica_wait_s(deployment) - short
    if longer <= 0 or not await state.workers.wait_for_replica(bus_name, longer):
        raise NoReplica(no_replica_message(deployment))


async def meter(state: GatewayState, request: Request, project: str,
                max_tokens: int) -> None:
    """Counts the request against its key's and its project's limits (a 429 if it would
    break one), expecting its prompt (about a token per 4 bytes of body) and
    ``max_tokens`` more; the response's end settles the count (``Metering``).

    A 429 is answered after up to ``TARPIT_S`` (never beyond its Retry-After): a client
    that waits as told loses nothing, and one that floods, ignoring it, is slowed to a
    request per second per connection instead of taking the gateway's CPU from
    everyone else's requests."""
    principal = principal_of(request.scope)
    key_limits, project_limits = state.keys.limits(principal, project)
    scopes = [(f"project:{project}", project_limits, f"project {project}")]
    if principal.key_id is not None:
        scopes.insert(0, (f"key:{principal.key_id}", key_limits, f"key {principal.key_id}"))
    size = int(request.headers.get("content-length") or 0)
    try:
        ticket, room = state.usage.admit(scopes, max_tokens + size // 4, time.time())
    except RateLimited as exc:
        await asyncio.sleep(min(TARPIT_S, exc.retry_after_s or TARPIT_S))
        raise
    request.scope["state"]["ticket"] = ticket
    if room is not None:
        request.scope["state"]["rate_headers"] = rate_headers(room)
