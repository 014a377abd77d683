"""Management API: this server's log lines (its own, and those the workers sent it over
the bus), found by request id, level and time."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from llmos.auth.roles import Role
from llmos.gateway.auth import requires
from llmos.gateway.deps import StateDep
from llmos.observability.logs import search

router = APIRouter(prefix="/api/logs", tags=["management"])


class LogList(BaseModel):
    data: list[dict[str, Any]]
    """Log lines as written to the log file (``ts``, ``level``, ``logger``, ``msg``,
    ``request_id`` and the line's fields), oldest first."""


@router.get("", response_model=LogList)
@requires(Role.admin)
async def list_logs(
        state: StateDep,
        request_id: str | None = Query(None, max_length=200,
                                       description="only this request's lines"),
        level: Literal["debug", "info", "warning", "error", "critical"] | None = Query(
            None, description="only lines at this level or above"),
        since: float | None = Query(None, description="only lines written at or after "
                                                      "this Unix time"),
        limit: int = Query(100, ge=1, le=10_000, description="at most this many (the "
                                                             "last ones)")) -> LogList:
    """This server's log lines. A gateway's log holds its own lines and, sent over the
    bus, the line each worker writes per request and the workers' warnings and errors:
    a request's whole story, whichever worker served it."""
    found = await asyncio.to_thread(search, state.settings.logs_dir, request_id=request_id,
                                    level=level, since=since, limit=limit)
    return LogList(data=found)
