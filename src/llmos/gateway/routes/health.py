"""Liveness, readiness, version and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmos import __version__
from llmos.auth.roles import Principal, Role
from llmos.gateway.auth import requires
from llmos.gateway.deps import StateDep
from llmos.gateway.health import readiness, served
from llmos.gateway.schemas import Health
from llmos.gateway.state import GatewayState
from llmos.observability.metrics import REGISTRY

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
@requires(None)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok", version=__version__)


@router.get("/readyz", response_model=Health, tags=["health"],
            responses={503: {"model": Health, "description": "not ready yet"}})
@requires(None)
async def readyz(request: Request, state: StateDep) -> Response:
    """200 once the default model has answered a request through the bus, while a live,
    undrained replica of it takes requests (a control plane: once it is up). ``served``
    names each deployment ``/v1/models`` lists and the workers taking its requests;
    ``detail`` and ``served`` are for admins (anyone while the server runs open)."""
    serving = await served(state)
    status, detail = readiness(state, serving)
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is not None and principal.role is Role.admin:
        body = Health(status=status, version=__version__, detail=detail, served=serving,
                      gateway=state.dispatcher.gateway_id)
    else:
        body = Health(status=status, version=__version__)
    return JSONResponse(body.model_dump(), status_code=200 if status == "ready" else 503)


@router.get("/api/version", response_model=Health, tags=["management"])
@requires(None)
async def version() -> Health:
    return Health(status="ok", version=__version__)


@router.get("/metrics", include_in_schema=False)
@requires(Role.admin)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@requires(Role.admin)
async def _fast_metrics(request: Request, state: GatewayState) -> Response:
    return await prometheus_metrics()


FAST_ROUTES = {("GET", "/metrics"): _fast_metrics}
"""A scrape skips the router too: it comes every few seconds, while requests stream."""
