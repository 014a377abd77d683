"""Who a request acts as (authentication) and whether it may (authorization).

- ``KeyBook``: the API keys, held in memory, so checking one costs a dictionary lookup
  and a SHA-256, never a query. The gateway that makes, revokes or limits a key
  reloads its book before it answers and says so on the bus (``names.KEYS_TOPIC``):
  every other gateway reloads at once. Each also looks at the store's change stamp
  every ``RELOAD_INTERVAL_S`` (2 s), for a message lost or a store changed by hand.
  (It looked every 0.5 s: 1.4 ms of CPU each time, twice a second, taken from the
  engine's compute threads on a busy machine.)
- ``Authenticate``: a pure ASGI middleware. A request that sends a key acts as that
  key's principal, or gets a 401 (malformed, unknown, revoked, expired). One that sends
  none acts as nobody. While the server runs open (bound to loopback with no key made
  yet) every request acts as ``OPEN``, an admin of the default project, whatever key
  it sends (OpenAI's clients always send one).
- ``requires(role)``: every endpoint declares the least role it needs (``None``:
  anyone, such as health checks); ``authorize`` (an app-wide dependency, and the fast
  routes) holds each request to its endpoint's declaration. An endpoint that declares
  nothing is refused to everyone but an admin, and the route-table test fails on it.
- ``scoped_project``: the project a request works in. A key sees only its own project:
  naming another is a 404, as if it did not exist (a 403 would confirm that it does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from llmos.auth.keys import matches, parse
from llmos.auth.limits import Limits
from llmos.auth.roles import OPEN, Principal, Role
from llmos.bus import Bus, TopicMessage, names
from llmos.errors import BusError, Forbidden, LLMOSError, NotFound, Unauthorized
from llmos.gateway.errors import error_response
from llmos.registry.refs import PROJECT_PATTERN
from llmos.store import Store

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 2.0
NO_LIMITS = Limits()
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Entry:
    secret_sha256: str
    principal: Principal
    expires_at: float | None
    revoked: bool
    limits: Limits


class KeyBook:
    def __init__(self, store: Store, *, required_without_keys: bool = False) -> None:
        self.store = store
        self.required_without_keys = required_without_keys
        """Keys are required even before one exists (a non-loopback address)."""
        self._entries: dict[str, _Entry] = {}
        self._projects: dict[str, Limits] = {}
        self._stamp: tuple[int, float, float] | None = None
        self._limited = False
        self._told = asyncio.Event()
        self._on_reload: list[Callable[[], None]] = []

    @property
    def required(self) -> bool:
        return self.required_without_keys or bool(self._entries)

    def refresh(self) -> bool:
        """Reload the keys if any changed since the last look (blocking: a thread's job).
        True if it reloaded."""
        stamp = self.store.keys.stamp()
        if stamp == self._stamp:
            return False
        entries = {}
        for row in self.store.keys.list():
            entries[row.id] = _Entry(
                row.secret_sha256, Principal(row.id, row.name, Role[row.role], row.project),
                row.expires_at, row.revoked_at is not None, Limits(**row.limits))
        projects = {name: Limits(**limits)
                    for name, limits in self.store.keys.project_limits().items()}
        self._entries, self._projects, self._stamp = entries, projects, stamp
        self._limited = (any(e.limits.any() for e in entries.values())
                         or any(limits.any() for limits in projects.values()))
        return True

    def limited(self) -> bool:
        """Whether any key or project has a limit (as of the last reload)."""
        return self._limited

    def limits(self, principal: Principal, project: str) -> tuple[Limits, Limits]:
        """The limits of the principal's key and of the project (no limit: ``Limits()``)."""
        entry = self._entries.get(principal.key_id) if principal.key_id else None
        return (entry.limits if entry else NO_LIMITS,
                self._projects.get(project, NO_LIMITS))

    def on_reload(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each reload that changed the book."""
        self._on_reload.append(callback)

    async def follow(self, bus: Bus | None = None, interval_s: float | None = None) -> None:
        """Keep the book current: reload when a gateway says on ``bus`` that a key
        changed, and look every ``interval_s`` (``RELOAD_INTERVAL_S``) in any case (a key
        revoked on another gateway stops working here at once, or within ``interval_s``
        and a query if that message is lost)."""
        interval_s = RELOAD_INTERVAL_S if interval_s is None else interval_s
        heard = None
        if bus is not None:
            try:
                heard = await bus.subscribe(names.KEYS_TOPIC, self._heard)
            except BusError as exc:
                log.warning("API keys: not listening for changes on the bus (%s); "
                            "looking every %.1f s only", exc.message, interval_s)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._told.wait(), interval_s)
                self._told.clear()
                await self.reload()
        finally:
            if heard is not None:
                with contextlib.suppress(BusError):
                    await heard.cancel()

    async def reload(self) -> None:
        """Reload now if anything changed (the store away: keep what we have, say so)."""
        try:
            changed = await asyncio.to_thread(self.refresh)
        except Exception as exc:
            log.warning("could not reload the API keys: %s", exc)
            return
        if changed:
            for callback in self._on_reload:
                callback()

    async def changed(self, bus: Bus) -> None:
        """A key or a project's limits changed here: reload now and tell every gateway."""
        await self.reload()
        try:
            await bus.broadcast(names.KEYS_TOPIC, b"{}", ttl_s=RELOAD_INTERVAL_S)
        except BusError as exc:
            log.warning("could not tell the other gateways that the API keys changed "
                        "(%s): they see it within %.1f s", exc.message, RELOAD_INTERVAL_S)

    async def _heard(self, message: TopicMessage) -> None:
        self._told.set()

    def principal(self, token: str, now: float) -> Principal:
        """The principal a bearer token stands for; 401 for any token that is not a live
        key (one message for all: nothing tells a guesser which part was wrong)."""
        parsed = parse(token)
        entry = self._entries.get(parsed[0]) if parsed else None
        if parsed is None or entry is None or not matches(parsed[1], entry.secret_sha256):
            raise Unauthorized("invalid API key: it is not one this server issued")
        if entry.revoked:
            raise Unauthorized(f"API key {parsed[0]} has been revoked")
        if entry.expires_at is not None and now >= entry.expires_at:
            raise Unauthorized(f"API key {parsed[0]} has expired")
        return entry.principal


class Authenticate:
    """Sets ``scope["state"]["principal"]`` (None: no key, where one is needed)."""

    def __init__(self, app: ASGIApp, *, book: KeyBook) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = bearer(scope)
        principal: Principal | None
        if not self.book.required:
            principal = OPEN  # (any key sent is ignored: OpenAI's clients always send one)
        elif token is not None:
            try:
                principal = self.book.principal(token, time.time())
            except LLMOSError as exc:
                log.warning("refused a request to %s: %s", scope["path"], exc.message)
                await error_response(exc)(scope, receive, send)
                return
        else:
            principal = None
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def bearer(scope: Scope) -> str | None:
    """The bearer token a request sends ("" for an Authorization header that is no
    bearer token; None for no header)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""  # (an Authorization header that is no bearer token: a bad key)
    return None


def requires(role: Role | None, *, nodes: bool = False) -> Callable[[F], F]:
    """Declares the least role an endpoint needs (None: anyone, with or without a key);
    ``nodes``: a join token may use it too (reading models a node pulls)."""
    def mark(endpoint: F) -> F:
        endpoint.llmos_requires = role  # type: ignore[attr-defined]
        endpoint.llmos_nodes = nodes  # type: ignore[attr-defined]
        return endpoint
    return mark


UNDECLARED = object()


def declared(endpoint: object) -> Role | object | None:
    """What an endpoint declared with ``requires``, or ``UNDECLARED``."""
    return getattr(endpoint, "llmos_requires", UNDECLARED)


def check(scope: Scope, endpoint: object) -> Principal | None:
    """Holds a request to what its endpoint declared: its principal, or None for an
    endpoint open to anyone; 401 with no key, 403 with too small a role."""
    needed = declared(endpoint)
    principal: Principal | None = scope.get("state", {}).get("principal")
    if needed is None:
        return principal
    if principal is None:
        raise Unauthorized("this server needs an API key: send it as 'Authorization: "
                           "Bearer llmos-…' (the CLI reads LLMOS_API_KEY)")
    wanted = needed if isinstance(needed, Role) else Role.admin
    if not principal.may(wanted, nodes=getattr(endpoint, "llmos_nodes", False)):
        if principal.role is Role.node:
            raise Forbidden(f"key {principal.key_id} ({principal.name}) is a node's join "
                            "token: it joins nodes and pulls models, nothing else")
        raise Forbidden(f"this needs the {wanted.name} role; key {principal.key_id} "
                        f"({principal.name}) has {principal.role.name}")
    return principal


async def authorize(request: Request) -> None:
    """The app-wide dependency: every routed request goes through ``check``."""
    check(request.scope, request.scope.get("endpoint"))


def principal_of(scope: Scope) -> Principal:
    """The principal of a request its endpoint let in with a role (never None there)."""
    principal: Principal | None = scope.get("state", {}).get("principal")
    if principal is None:
        raise Unauthorized("this server needs an API key")
    return principal


async def _principal(request: Request) -> Principal:
    return principal_of(request.scope)


def inference_project(scope: Scope) -> str:
    """The project an OpenAI-API request works in: the key's, or the one its
    ``OpenAI-Project`` header names (as OpenAI's clients send their ``project``), which
    only an admin's key may leave for another."""
    principal = principal_of(scope)
    asked = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"openai-project"),
                 None)
    chosen = asked or principal.project
    if not principal.sees(chosen):
        raise NotFound(f"no project {chosen!r}")
    return chosen


async def scoped_project(
        request: Request,
        project: Annotated[str | None, Query(
            description="the project (default: the key's own); a key sees only its own, "
                        "an admin's every one", pattern=PROJECT_PATTERN)] = None) -> str:
    principal = principal_of(request.scope)
    chosen = project or principal.project
    if not principal.sees(chosen):
        raise NotFound(f"no project {chosen!r}")
    return chosen


ProjectDep = Annotated[str, Depends(scoped_project)]
PrincipalDep = Annotated[Principal, Depends(_principal)]
