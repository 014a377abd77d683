"""Management API: the audit log (admins)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from llmos.auth.roles import Role
from llmos.gateway.auth import requires
from llmos.gateway.deps import StateDep
from llmos.store.tables import AuditEntry

router = APIRouter(tags=["keys"])


class AuditPublic(BaseModel):
    id: int
    at: float
    """Unix time the answer ended."""
    key_id: str | None
    """The key (for a refused request: the id its token claimed, if well formed)."""
    key_name: str | None
    role: str | None
    project: str | None
    method: str
    path: str
    action: str | None
    """The endpoint (``create_deployment``, ``revoke_key``, …)."""
    status: int
    client: str | None
    """The client's address."""
    request_id: str | None


class AuditList(BaseModel):
    data: list[AuditPublic]


def _public(e: AuditEntry) -> AuditPublic:
    return AuditPublic(id=e.id, at=e.at, key_id=e.key_id, key_name=e.key_name, role=e.role,
                       project=e.project, method=e.method, path=e.path, action=e.action,
                       status=e.status, client=e.client, request_id=e.request_id)


@router.get("/api/audit", response_model=AuditList)
@requires(Role.admin)
async def list_audit(
        state: StateDep,
        key_id: Annotated[str | None, Query(max_length=32)] = None,
        project: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=64,
                                            description="an endpoint's name")] = None,
        since: Annotated[float | None, Query(description="Unix time")] = None,
        failed: Annotated[bool, Query(description="only those refused or failed")] = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> AuditList:
    """Management actions (every change through ``/api/``, and every ``/api/`` request
    refused for want of a key or a role), oldest first: the last ``limit`` that match."""
    rows = await asyncio.to_thread(state.audit.store.audit.list, key_id=key_id,
                                   project=project, action=action, since=since,
                                   failed=failed, limit=limit)
    return AuditList(data=[_public(e) for e in rows])
