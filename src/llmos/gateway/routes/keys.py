"""Management API for API keys (admins), and ``whoami`` (any key)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from llmos.auth.roles import Role
from llmos.errors import NotFound
from llmos.gateway.auth import PrincipalDep, requires
from llmos.gateway.deps import StateDep
from llmos.gateway.schemas import ErrorResponse
from llmos.registry.local import PROJECT_PATTERN
from llmos.store.tables import ApiKey

router = APIRouter(tags=["keys"])
_ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorResponse}}
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="who or what holds it")
    role: Literal["user", "operator", "admin"] = "user"
    project: str = Field("default", pattern=PROJECT_PATTERN)
    expires_in_s: float | None = Field(None, gt=0, description="it stops working after "
                                       "this many seconds (none: never)")


class KeyPublic(BaseModel):
    id: str
    name: str
    role: str
    project: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    state: Literal["active", "expired", "revoked"]


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
                     revoked_at=row.revoked_at, state=state)


@router.post("/api/keys", response_model=KeyCreated, status_code=201)
@requires(Role.admin)
async def create_key(body: KeyCreate, state: StateDep) -> KeyCreated:
    """A new key. Its token is in this answer only."""
    now = time.time()
    expires_at = now + body.expires_in_s if body.expires_in_s else None
    row, token = await asyncio.to_thread(state.keys.store.keys.create, body.name,
                                         Role[body.role], body.project, now=now,
                                         expires_at=expires_at)
    await asyncio.to_thread(state.keys.refresh)  # (here at once; elsewhere within 0.5 s)
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
    """Revoke a key: refused here at once, by every other gateway within a second."""
    now = time.time()
    row = await asyncio.to_thread(state.keys.store.keys.revoke, key_id, now)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    await asyncio.to_thread(state.keys.refresh)
    return public(row, now)


@router.get("/api/whoami", response_model=Whoami)
@requires(Role.user)
async def whoami(principal: PrincipalDep) -> Whoami:
    """The key a request is made with: its id, name, role and project."""
    return Whoami(key_id=principal.key_id, name=principal.name, role=principal.role.name,
                  project=principal.project)
