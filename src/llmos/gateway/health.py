"""Readiness: what this gateway serves and by whom, and whether its default model has
answered one real request through the bus."""

from __future__ import annotations

import asyncio
import logging

from llmos.errors import LLMOSError
from llmos.gateway.state import GatewayState
from llmos.observability.context import new_request_id

log = logging.getLogger(__name__)


async def probe_until_ready(state: GatewayState, interval_s: float = 0.5) -> None:
    """Send the default model a one-token request until one is answered. Only an error a
    worker answered with is kept for ``/readyz`` (the rest it reads from the catalog and
    the heartbeats, as they are when asked)."""
    model = state.probe_model
    if model is None:
        return
    while not state.ready:
        try:
            await state.catalog.get(model)
            handle = await state.dispatcher.submit(
                request_id=f"readyz-{new_request_id()}", deployment=model, kind="completion",
                body={"prompt": "Hello", "max_tokens": 1, "temperature": 0}, stream=False,
                max_tokens_explicit=True)
            async for chunk in handle.chunks():
                if chunk.error is not None:
                    state.probe_error = chunk.error.message
                    raise LLMOSError(chunk.error.message)
            state.ready = True
            state.probe_error = None
            log.info("ready: %s answered through the bus", model)
        except LLMOSError:
            await asyncio.sleep(interval_s)


async def served(state: GatewayState) -> dict[str, list[str]]:
    """Each deployment ``/v1/models`` lists, with the live workers that take its
    requests now (``/api/workers``'s ids, in state ``serving``)."""
    deployments = await state.catalog.deployments()
    found: dict[str, list[str]] = {d.name: [] for d in deployments}
    for heartbeat in state.workers.workers():
        if heartbeat.deployment in found and not heartbeat.draining:
            found[heartbeat.deployment].append(heartbeat.worker_id)
    return found


def readiness(state: GatewayState, serving: dict[str, list[str]]) -> tuple[str, str]:
    """The status (``ready``, ``starting`` or ``unavailable``) and the words that say
    why, from what is known now."""
    model = state.probe_model
    if model is None:
        taking = sum(len(ids) for ids in serving.values())
        return "ready", (f"control plane: {len(serving)} deployments, {taking} workers "
                         "taking requests")
    workers = serving.get(model)
    if state.ready and workers:
        return "ready", f"{model} answered; served by {', '.join(workers)}"
    if state.ready:
        return "unavailable", (f"no replica of {model} takes requests now (none is live, "
                               "or all are drained)")
    if workers is None:
        return "starting", f"the deployment {model} is not created yet"
    if not workers:
        deployment = state.catalog.cached(model)
        loading = deployment is not None and state.catalog.starting(deployment)
        return "starting", (f"{model}: no worker has joined yet"
                            + ("; a replica is starting (its model loads)" if loading else ""))
    answer = f"; it answered: {state.probe_error}" if state.probe_error else ""
    return "starting", (f"{model}: {', '.join(workers)} joined; waiting for the first "
                        f"answer{answer}")
