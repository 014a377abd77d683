"""FastAPI dependencies as Annotated aliases (async: a sync one would cost a thread hop)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from llmos.gateway.state import GatewayState


async def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(_state)]
