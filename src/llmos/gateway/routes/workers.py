"""Management API for worker processes: who is alive, and drain/resume one."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from llmos.auth.roles import Role
from llmos.bus.messages import Heartbeat
from llmos.gateway.auth import requires
from llmos.gateway.deps import StateDep
from llmos.gateway.schemas import ErrorResponse

router = APIRouter(prefix="/api/workers", tags=["management"])


class WorkerPublic(BaseModel):
    id: str
    deployment: str
    host: str
    slots: int
    busy_slots: int
    state: Literal["serving", "draining", "drained"]
    """``drained``: draining, and nothing left on its engine."""
    last_heartbeat: float
    """Unix time of the worker's latest heartbeat."""
    pid: int
    home: str | None
    """The state directory of its process (none: it runs inside a server or agent)."""
    version: str
    started_at: float
    """Unix time its process started serving."""
    engine: dict[str, Any]
    """Its engine's settings: model file, slots, context size, threads, …"""


class WorkerList(BaseModel):
    data: list[WorkerPublic]


class CommandAccepted(BaseModel):
    worker_id: str
    action: Literal["drain", "resume"]
    expires_at: float


def _public(h: Heartbeat) -> WorkerPublic:
    state: Literal["serving", "draining", "drained"] = (
        "serving" if not h.draining else "drained" if h.busy == 0 else "draining")
    return WorkerPublic(id=h.worker_id, deployment=h.deployment, host=h.host, slots=h.slots,
                        busy_slots=h.busy, state=state, last_heartbeat=h.sent_at, pid=h.pid,
                        home=h.home, version=h.version, started_at=h.started_at,
                        engine=h.engine)


@router.get("", response_model=WorkerList)
@requires(Role.admin)
async def list_workers(state: StateDep) -> WorkerList:
    """Worker processes heard from within two heartbeat intervals."""
    return WorkerList(data=[_public(h) for h in state.workers.workers()])


_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no live worker with this id"},
    400: {"model": ErrorResponse, "description": "the id is the start of several workers'"}}


@router.get("/{worker_id}", response_model=WorkerPublic, responses=_NOT_FOUND)
@requires(Role.admin)
async def get_worker(worker_id: str, state: StateDep) -> WorkerPublic:
    """One live worker, by its id or the start of it (unique)."""
    return _public(state.workers.worker(worker_id))


@router.post("/{worker_id}/drain", response_model=CommandAccepted, status_code=202,
             responses=_NOT_FOUND)
@requires(Role.admin)
async def drain_worker(worker_id: str, state: StateDep) -> CommandAccepted:
    """The worker takes no new requests; those in flight finish (it is ``drained`` when
    none is left). The id may be abbreviated to a unique prefix."""
    command = await state.workers.command(worker_id, "drain")
    return CommandAccepted(worker_id=command.worker_id, action="drain",
                           expires_at=command.expires_at)


@router.post("/{worker_id}/resume", response_model=CommandAccepted, status_code=202,
             responses=_NOT_FOUND)
@requires(Role.admin)
async def resume_worker(worker_id: str, state: StateDep) -> CommandAccepted:
    """A drained worker takes requests again."""
    command = await state.workers.command(worker_id, "resume")
    return CommandAccepted(worker_id=command.worker_id, action="resume",
                           expires_at=command.expires_at)
