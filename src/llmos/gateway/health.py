"""Readiness: the default model must have answered one real request through the bus."""

from __future__ import annotations

import asyncio
import logging

from llmos.errors import LLMOSError
from llmos.gateway.state import GatewayState
from llmos.observability.context import new_request_id

log = logging.getLogger(__name__)


async def probe_until_ready(state: GatewayState, interval_s: float = 0.5) -> None:
    model = state.settings.default_model
    while not state.ready:
        try:
            await state.catalog.get(model)
            handle = await state.dispatcher.submit(
                request_id=f"readyz-{new_request_id()}", deployment=model, kind="completion",
                body={"prompt": "Hello", "max_tokens": 1, "temperature": 0}, stream=False,
                max_tokens_explicit=True)
            async for chunk in handle.chunks():
                if chunk.error is not None:
                    raise LLMOSError(chunk.error.message)
            state.ready = True
            state.ready_detail = f"{model} answered"
            log.info("ready: %s answered through the bus", model)
        except LLMOSError as exc:
            state.ready_detail = f"waiting for {model}: {exc.message}"
            await asyncio.sleep(interval_s)
