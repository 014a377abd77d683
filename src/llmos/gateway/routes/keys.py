"""Management API for API keys (admins), and ``whoami`` (any key)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from llmos.auth.limits import DAY
from llmos.auth.roles import Role
from llmos.errors import NotFound
from llmos.gateway.auth import PrincipalDep, requires
from llmos.gateway.deps import StateDep
from llmos.gateway.schemas import ErrorResponse
from llmos.registry.refs import PROJECT_PATTERN
from llmos.store.tables import ApiKey

router = APIRouter(tags=["keys"])
_ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorResponse}}
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


class LimitsBody(BaseModel):
    """Rate limits and a daily quota (none: no limit)."""

    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens (prompt and completion) per "
                            "minute")
    concurrent: int | None = Field(None, ge=1, description="requests in flight at once")
    tokens_per_day: int | None = Field(None, ge=1, description="tokens per UTC day")


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="who or what holds it")
    role: Literal["user", "operator", "admin", "node"] = Field(
        "user", description="node: a join token for an agent or worker (see "
        "POST /api/nodes/join)")
    project: str = Field("default", pattern=PROJECT_PATTERN)
    expires_in_s: float | None = Field(None, gt=0, description="it stops working after "
                                       "this many seconds (none: never)")
    limits: LimitsBody = Field(default_factory=LimitsBody)


class KeyChange(BaseModel):
    limits: LimitsBody


class KeyPublic(BaseModel):
    id: str
    name: str
    role: str
    project: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    state: Literal["active", "expired", "revoked"]
    limits: LimitsBody


class KeyCreated(KeyPublic):
    key: str
    """The token to send as ``Authorization: Bearer …``: shown here once, never again
    (only its SHA-256 is kept)."""


class KeyList(BaseModel):
    data: list[KeyPublic]


class Whoami(BaseModel):
    key_id: str | None
    """None: no key (the server runs open)."""
    name: str
    role: str
    project: str


def public(row: ApiKey, now: float) -> KeyPublic:
    state: Literal["active", "expired", "revoked"] = (
        "revoked" if row.revoked_at is not None else
        "expired" if row.expires_at is not None and row.expires_at <= now else "active")
    return KeyPublic(id=row.id, name=row.name, role=row.role, project=row.project,
                     created_at=row.created_at, expires_at=row.expires_at,
                     revoked_at=row.revoked_at, state=state,
                     limits=LimitsBody(**row.limits))


@router.post("/api/keys", response_model=KeyCreated, status_code=201)
@requires(Role.admin)
async def create_key(body: KeyCreate, state: StateDep) -> KeyCreated:
    """A new key. Its token is in this answer only."""
    now = time.time()
    expires_at = now + body.expires_in_s if body.expires_in_s else None
    row, token = await asyncio.to_thread(
        state.keys.store.keys.create, body.name, Role[body.role], body.project, now=now,
        expires_at=expires_at, limits=body.limits.model_dump(exclude_none=True))
    await state.keys.changed(state.dispatcher.bus)  # (here, and on every gateway, at once)
    return KeyCreated(**public(row, now).model_dump(), key=token)


@router.get("/api/keys", response_model=KeyList)
@requires(Role.admin)
async def list_keys(state: StateDep, project: str | None = None) -> KeyList:
    """Every key (or a project's), oldest first; never their secrets."""
    now = time.time()
    rows = await asyncio.to_thread(state.keys.store.keys.list, project)
    return KeyList(data=[public(row, now) for row in rows])


@router.delete("/api/keys/{key_id}", response_model=KeyPublic, responses=_ERRORS)
@requires(Role.admin)
async def revoke_key(key_id: KeyIdPath, state: StateDep) -> KeyPublic:
    """Revoke a key: refused here at once, by every other gateway as soon as it hears (within
    2 s if it does not)."""
    now = time.time()
    row = await asyncio.to_thread(state.keys.store.keys.revoke, key_id, now)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    await state.keys.changed(state.dispatcher.bus)
    return public(row, now)


@router.patch("/api/keys/{key_id}", response_model=KeyPublic, responses=_ERRORS)
@requires(Role.admin)
async def change_key(key_id: KeyIdPath, body: KeyChange, state: StateDep) -> KeyPublic:
    """Set a key's limits (those left out: no limit)."""
    now = time.time()
    row = await asyncio.to_thread(state.keys.store.keys.set_limits, key_id,
                                  body.limits.model_dump(exclude_none=True), now)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    await state.keys.changed(state.dispatcher.bus)
    return public(row, now)


ProjectPath = Annotated[str, Path(pattern=PROJECT_PATTERN)]


@router.get("/api/projects/{project}/limits", response_model=LimitsBody, responses=_ERRORS)
@requires(Role.user)
async def project_limits(project: ProjectPath, state: StateDep,
                         principal: PrincipalDep) -> LimitsBody:
    """A project's limits, over all its keys together."""
    if not principal.sees(project):
        raise NotFound(f"no project {project!r}")
    limits = await asyncio.to_thread(state.keys.store.keys.project_limits)
    return LimitsBody(**limits.get(project, {}))


@router.put("/api/projects/{project}/limits", response_model=LimitsBody)
@requires(Role.admin)
async def set_project_limits(project: ProjectPath, body: LimitsBody,
                             state: StateDep) -> LimitsBody:
    """Set a project's limits (those left out: no limit)."""
    await asyncio.to_thread(state.keys.store.keys.set_project_limits, project,
                            body.model_dump(exclude_none=True), time.time())
    await state.keys.changed(state.dispatcher.bus)
    return body


class UsageDay(BaseModel):
    scope: str
    """``key:ID`` or ``project:NAME``."""
    day: str
    """The UTC day, YYYY-MM-DD."""
    requests: int
    tokens: int


class UsageList(BaseModel):
    data: list[UsageDay]


@router.get("/api/usage", response_model=UsageList)
@requires(Role.user)
async def usage(state: StateDep, principal: PrincipalDep,
                days: Annotated[int, Query(ge=1, le=366)] = 7,
                project: Annotated[str | None, Query(pattern=PROJECT_PATTERN)] = None
                ) -> UsageList:
    """Requests and tokens per UTC day: a user's key its own; an operator its project's
    and its keys'; an admin any project's (``project``) or everything. What other
    gateways counted shows within 5 s (within 0.5 s while some limit is set)."""
    await state.usage.share()  # (what this gateway counted shows at once)
    since = int(time.time() // DAY) * DAY - (days - 1) * DAY
    store = state.keys.store
    if principal.role is Role.user:
        rows = await asyncio.to_thread(store.usage.days, [f"key:{principal.key_id}"],
                                       since=since)
    else:
        chosen = project or (None if principal.role is Role.admin else principal.project)
        if chosen is not None and not principal.sees(chosen):
            raise NotFound(f"no project {chosen!r}")
        rows = await asyncio.to_thread(store.usage.days, since=since)
        if chosen is not None:
            keys = {f"key:{k.id}" for k in await asyncio.to_thread(store.keys.list, chosen)}
            rows = [r for r in rows if r.scope == f"project:{chosen}" or r.scope in keys]
    return UsageList(data=[UsageDay(scope=r.scope, day=time.strftime(
        "%Y-%m-%d", time.gmtime(r.start)), requests=r.requests, tokens=r.tokens)
        for r in rows])


@router.get("/api/whoami", response_model=Whoami)
@requires(Role.user, nodes=True)
async def whoami(principal: PrincipalDep) -> Whoami:
    """The key a request is made with: its id, name, role and project."""
    return Whoami(key_id=principal.key_id, name=principal.name, role=principal.role.name,
                  project=principal.project)
