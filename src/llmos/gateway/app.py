"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from llmos import __version__
from llmos.aio import stop_task
from llmos.auth.roles import Role
from llmos.bus import Bus
from llmos.gateway.affinity import PrefixRouter
from llmos.gateway.audit import AuditTrail, AuditWriter
from llmos.gateway.auth import Authenticate, KeyBook, authorize, declared
from llmos.gateway.body import component_schemas
from llmos.gateway.catalog import Catalog
from llmos.gateway.control import WorkerControl
from llmos.gateway.dispatch import Dispatcher
from llmos.gateway.errors import HANDLERS, install_error_handlers
from llmos.gateway.fastpath import FastRoutes
from llmos.gateway.guard import BrowserGuard
from llmos.gateway.health import probe_until_ready
from llmos.gateway.metering import Metering, UsageBook, open_counters
from llmos.gateway.middleware import RequestIdMiddleware
from llmos.gateway.routes import (
    audit,
    cluster,
    health,
    keys,
    logs,
    models,
    openai,
    responses,
    workers,
)
from llmos.gateway.state import GatewayState
from llmos.gateway.stranded import fail_stranded
from llmos.gateway.traffic import TrafficMeter
from llmos.registry.local import LocalRegistry
from llmos.settings import Settings
from llmos.store import Store

ROUTERS = (openai.router, responses.router, health.router, workers.router, logs.router,
           keys.router, audit.router, models.router, cluster.router)
"""Every route of the API (each declares the role it needs: gateway/auth.py)."""


def create_app(settings: Settings, bus: Bus, store: Store,
               registry: LocalRegistry | None = None, *,
               control_plane: bool = False) -> FastAPI:
    """Build the API app; the bus must be connected before the app starts. A control
    plane is ready once it is up; otherwise the default model's first answer makes it
    ready."""
    affinity = (PrefixRouter(min_chars=settings.prefix_min_chars)
              if settings.prefix_routing else None)
    dispatcher = Dispatcher(bus, timeout_s=settings.request_timeout_s, router=affinity)
    state = GatewayState(
        keys=KeyBook(store, required_without_keys=settings.keys_always_required),
        audit=AuditWriter(store),
        usage=UsageBook(store, open_counters(settings.counters_url, store)),
        probe_model=None if control_plane else settings.default_model,
        registry=registry or LocalRegistry(settings.models_dir),
        settings=settings,
        dispatcher=dispatcher,
        traffic=TrafficMeter(bus, dispatcher.gateway_id),
        catalog=Catalog(store),
        workers=WorkerControl(bus, affinity),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.keys.refresh)
        state.keys.on_reload(state.usage.limits_changed)
        state.audit.start()
        await state.dispatcher.start()
        await state.workers.start()
        state.traffic.start()
        tasks = [asyncio.create_task(probe_until_ready(state), name="readiness-probe"),
                 asyncio.create_task(state.keys.follow(bus), name="api-keys"),
                 asyncio.create_task(state.usage.follow(state.keys.limited), name="usage"),
                 asyncio.create_task(fail_stranded(state), name="stranded-requests")]
        try:
            yield
        finally:
            for task in tasks:
                await stop_task(task)
            await state.traffic.stop()
            await state.workers.stop()
            await state.dispatcher.stop()
            await state.audit.stop()
            await state.catalog.close()
            await state.usage.share()  # (what was counted since the last exchange)
            state.usage.counters.close()

    app = FastAPI(title="LLMOS", version=__version__, lifespan=lifespan,
                  dependencies=[Depends(authorize)],
                  description="OpenAI-compatible inference and management API of LLMOS.")
    app.state.gateway = state
    install_error_handlers(app)
    app.add_middleware(FastRoutes, routes=openai.FAST_ROUTES | health.FAST_ROUTES,
                       handlers=HANDLERS, state=state)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["x-request-id", "retry-after"])
    app.add_middleware(BrowserGuard, bind_host=settings.host,
                       allowed_hosts=settings.allowed_hosts,
                       cors_origins=settings.cors_origins,
                       max_body_bytes=settings.limits.max_body_bytes)
    app.add_middleware(Metering, book=state.usage)
    app.add_middleware(Authenticate, book=state.keys)
    app.add_middleware(AuditTrail, writer=state.audit)
    app.add_middleware(RequestIdMiddleware)  # (the outer one: the fast routes need its id)
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_EVERY_OPERATION = {
    "400": "invalid request (a parameter, the body, or not valid HTTP)",
    "401": "no API key where the server needs one, or one that is malformed, unknown, "
           "revoked or expired",
    "403": "refused: the key's role is too small for this, the request was sent to a host "
           "name that is not the server's (allowed_hosts), or from a web page of another "
           "origin (cors_origins)",
    "500": "internal error",
}
_WITH_BODY = {"413": "the body is larger than limits.max_body_bytes",
              "415": "the body's Content-Type is not the endpoint's"}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The schema as FastAPI builds it, with the statuses every route may answer (the
    browser guard's, and 400 instead of FastAPI's 422: validation errors are 400s here)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        roles = {(method.lower(), route.path.replace(":path}", "}")): declared(route.endpoint)
                 for router in ROUTERS for route in router.routes
                 if isinstance(route, APIRoute) for method in route.methods or ()}
        for path_name, path in schema.get("paths", {}).items():
            for method, operation in path.items():
                role = roles.get((method, path_name))
                if isinstance(role, Role):
                    operation["security"] = [{"bearer": []}]
                    operation["x-llmos-role"] = role.name
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                extra = _EVERY_OPERATION | (_WITH_BODY if "requestBody" in operation else {})
                for status, text in extra.items():
                    responses.setdefault(status, {"description": text, "content": {
                        "application/json": {"schema": _ERROR}}})
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API key, llmos-<id>.<secret> (needed once a key exists, or "
                           "beyond loopback; x-llmos-role: the least role an operation "
                           "needs)"}}
        schemas = components.setdefault("schemas", {})
        schemas.update(component_schemas())
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema
