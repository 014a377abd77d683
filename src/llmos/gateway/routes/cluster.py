"""Management API of the cluster: deployments, nodes, events.

Every change goes to the store (desired state) and wakes the active controller over
the bus; the controller places, rolls and heals. What runs where is read back from
the store, where the controller records it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmos import __version__
from llmos import deployments as ops
from llmos.auth.roles import Role
from llmos.bus import names
from llmos.errors import BusError, NotFound
from llmos.gateway.auth import PrincipalDep, ProjectDep, requires
from llmos.gateway.deps import StateDep
from llmos.gateway.schemas import ErrorResponse
from llmos.gateway.state import GatewayState
from llmos.registry.refs import PROJECT_PATTERN, REF_PATTERN
from llmos.settings import EngineSettings
from llmos.store import Deployment, Store
from llmos.store.tables import Event, Node, Replica

router = APIRouter(tags=["cluster"])

DEPLOYMENT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
NODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"

DeploymentPath = Annotated[str, Path(pattern=DEPLOYMENT_PATTERN,
                                     description="the deployment (its OpenAI model id)")]
NodePath = Annotated[str, Path(pattern=NODE_PATTERN)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such deployment, node or model"},
    409: {"model": ErrorResponse, "description": "the deployment already exists"}}


class ResourcesIn(BaseModel):
    """What one replica needs; what is left out is estimated from the model and its
    engine settings (memory) or taken from them (CPU: the engine's threads)."""

    model_config = ConfigDict(extra="forbid")
    cpu: float | None = Field(None, gt=0, le=1024)
    memory: int | None = Field(None, ge=1 << 20, description="bytes")
    gpus: int | None = Field(None, ge=0, le=64)

    def stored(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _check_settings(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    unknown = set(value) - set(EngineSettings.model_fields)
    if unknown:
        known = ", ".join(sorted(EngineSettings.model_fields))
        raise ValueError(f"unknown engine settings: {', '.join(sorted(unknown))}; "
                         f"known: {known}")
    EngineSettings.model_validate(value)
    return value


def _check_selector(value: dict[str, str] | None) -> dict[str, str] | None:
    import re

    for key, label in (value or {}).items():
        if not re.match(LABEL_PATTERN, key) or not re.match(LABEL_PATTERN, label):
            raise ValueError(f"not a label: {key[:64]}={label[:64]}")
    return value


class AutoscaleIn(BaseModel):
    """Opt in to autoscaling: the replica count follows the traffic (Erlang C on the
    measured arrival rate and service times) to meet the wait objective, within
    ``min``..``max``; with ``min`` 0, no request for ``idle_s`` scales it to zero."""

    model_config = ConfigDict(extra="forbid")
    min: int = Field(1, ge=0, le=1000)
    max: int = Field(8, ge=1, le=1000)
    wait_s: float = Field(1.0, gt=0, le=3600, description="a request starts within this "
                          "many seconds ...")
    percentile: float = Field(0.99, ge=0.5, le=0.9999, description="... for this fraction "
                              "of requests")
    idle_s: float = Field(300.0, ge=5, le=86400, description="with min 0: no request "
                          "for this long scales it to zero")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleIn:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int | None = Field(None, ge=0, le=1000)
    autoscale: AutoscaleIn | Literal[False] | None = Field(
        None, description="autoscaling bounds and objective; false switches it off (a "
        "manual replica count of an autoscaled deployment needs one or the other)")
    settings: dict[str, Any] | None = Field(
        None, description="engine settings over the server's defaults (slots, ctx_size, "
        "threads, ...)")
    resources: ResourcesIn | None = None
    node_selector: dict[str, str] | None = Field(
        None, description="labels a node must have", max_length=16)
    strategy: Literal["spread", "binpack"] | None = None
    anti_affinity: bool | None = Field(None, description="at most one replica per node")
    priority: int | None = Field(None, ge=0, le=100, description="higher wins scarce room")
    aliases: list[Annotated[str, Field(pattern=DEPLOYMENT_PATTERN)]] | None = Field(
        None, max_length=16, description="more model ids the API serves it under")

    _settings = field_validator("settings")(_check_settings)
    _selector = field_validator("node_selector")(_check_selector)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, stored in (("replicas", "replicas"), ("settings", "engine_settings"),
                            ("node_selector", "node_selector"), ("strategy", "strategy"),
                            ("anti_affinity", "anti_affinity"), ("priority", "priority"),
                            ("aliases", "aliases")):
            value = getattr(self, key)
            if value is not None:
                out[stored] = value
        if self.resources is not None:
            out["resources"] = self.resources.stored()
        if self.autoscale is not None:
            out["autoscale"] = self.autoscale.model_dump() if self.autoscale else {}
        return out


class NewDeployment(DeploymentSpec):
    name: str = Field(pattern=DEPLOYMENT_PATTERN, description="also its OpenAI model id")
    model: str = Field(pattern=REF_PATTERN, description="name, name:tag or name@N; resolved "
                       "now to a version, which the deployment keeps until changed")


class DeploymentChange(DeploymentSpec):
    model: str | None = Field(None, pattern=REF_PATTERN, description="move to the version "
                              "this names now (rolled one replica at a time)")


class ReplicaPublic(BaseModel):
    id: str
    deployment: str
    node: str
    state: str
    generation: int
    model_version: str
    reserved: dict[str, Any]
    rss: int
    restarts: int
    message: str | None


class EventPublic(BaseModel):
    at: float
    kind: str
    deployment: str | None
    node: str | None
    replica: str | None
    message: str


class DeploymentPublic(BaseModel):
    name: str
    project: str
    model: str
    model_version: str | None
    replicas: int
    ready: int
    generation: int
    settings: dict[str, Any]
    resources: dict[str, Any]
    node_selector: dict[str, str]
    strategy: str
    anti_affinity: bool
    priority: int
    aliases: list[str]
    message: str | None
    """Why it is not fully placed, when it is not."""
    autoscale: dict[str, Any] | None = None
    """Its autoscaling bounds and objective; None: not autoscaled."""
    autoscaler: dict[str, Any] | None = None
    """The autoscaler's last look: arrival rates, service time, slots, replicas ready and
    starting, in flight, the servers Erlang C asked for, the predicted wait, why."""
    placed: list[ReplicaPublic] | None = None
    events: list[EventPublic] | None = None


class DeploymentList(BaseModel):
    data: list[DeploymentPublic]


class NodePublic(BaseModel):
    name: str
    state: str
    cordoned: bool
    labels: dict[str, str]
    capacity: dict[str, Any]
    last_seen: float
    replicas: list[ReplicaPublic] | None = None
    events: list[EventPublic] | None = None


class NodeList(BaseModel):
    data: list[NodePublic]


class EventList(BaseModel):
    data: list[EventPublic]


def _replica(r: Replica) -> ReplicaPublic:
    return ReplicaPublic(id=r.id, deployment=r.deployment, node=r.node, state=r.state,
                         generation=r.generation, model_version=r.model_version,
                         reserved=dict(r.reserved or {}), rss=r.rss, restarts=r.restarts,
                         message=r.message)


def _event(e: Event) -> EventPublic:
    return EventPublic(at=e.at, kind=e.kind, deployment=e.deployment, node=e.node,
                       replica=e.replica, message=e.message)


def _deployment(d: Deployment, replicas: list[Replica], *, detail: bool = False,
                events: list[Event] | None = None) -> DeploymentPublic:
    mine = [r for r in replicas if r.deployment == d.name and r.project == d.project]
    return DeploymentPublic(
        name=d.name, project=d.project, model=d.model_ref, model_version=d.model_version,
        replicas=d.replicas, ready=sum(r.state == "ready" for r in mine),
        generation=d.generation, settings=dict(d.engine_settings or {}),
        resources=dict(d.resources or {}), node_selector=dict(d.node_selector or {}),
        strategy=d.strategy, anti_affinity=d.anti_affinity, priority=d.priority,
        aliases=list(d.aliases or []), message=d.message, autoscale=d.autoscale,
        autoscaler=d.autoscale_status if d.autoscale else None,
        placed=[_replica(r) for r in mine] if detail else None,
        events=[_event(e) for e in events] if events is not None else None)


def _node(n: Node, state: GatewayState, *, replicas: list[Replica] | None = None,
          events: list[Event] | None = None) -> NodePublic:
    alive = n.last_seen and n.state != "lost"
    return NodePublic(
        name=n.name, state=n.state if alive else "lost", cordoned=n.cordoned,
        labels=dict(n.labels or {}), capacity=dict(n.capacity or {}),
        last_seen=n.last_seen,
        replicas=[_replica(r) for r in replicas] if replicas is not None else None,
        events=[_event(e) for e in events] if events is not None else None)


def _store(state: GatewayState) -> Store:
    return state.catalog.store


async def _changed(state: GatewayState) -> None:
    """Wake the active controller (it also looks every second by itself)."""
    try:
        await state.dispatcher.bus.broadcast(names.CHANGED_TOPIC, b"{}", ttl_s=5)
    except BusError:
        pass
    state.catalog.invalidate()


# -- deployments -------------------------------------------------------------------------


@router.get("/api/deployments", response_model=DeploymentList, responses=_ERRORS)
@requires(Role.user)
async def list_deployments(state: StateDep, project: ProjectDep
                           ) -> DeploymentList:
    """Every deployment of the project, with how many replicas it asks for and has ready."""
    store = _store(state)
    rows = await asyncio.to_thread(store.list_deployments, project)
    replicas = await asyncio.to_thread(store.replicas.list, project=project)
    return DeploymentList(data=[_deployment(d, replicas) for d in rows])


@router.post("/api/deployments", response_model=DeploymentPublic, status_code=201,
             responses=_ERRORS)
@requires(Role.operator)
async def create_deployment(body: NewDeployment, state: StateDep,
                            project: ProjectDep) -> DeploymentPublic:
    """Deploy a model: its reference is resolved now to a version, pinned while it runs;
    the controller places its replicas."""
    store = _store(state)
    row = await asyncio.to_thread(ops.create, store, state.registry, body.name, body.model,
                                  project=project, **body.fields())
    await _changed(state)
    return _deployment(row, [], detail=True)


@router.get("/api/deployments/{name}", response_model=DeploymentPublic, responses=_ERRORS)
@requires(Role.user)
async def show_deployment(name: DeploymentPath, state: StateDep,
                          project: ProjectDep,
                          events: Annotated[int, Query(ge=0, le=1000,
                                                       description="last events")] = 20
                          ) -> DeploymentPublic:
    """A deployment with its replicas (node, state) and its last events."""
    store = _store(state)
    row = await asyncio.to_thread(ops.get, store, name, project)
    replicas = await asyncio.to_thread(store.replicas.list, deployment=name, project=project)
    last = await asyncio.to_thread(store.events.list, deployment=name, project=project,
                                   limit=events)
    return _deployment(row, replicas, detail=True, events=last)


@router.patch("/api/deployments/{name}", response_model=DeploymentPublic, responses=_ERRORS)
@requires(Role.operator)
async def update_deployment(name: DeploymentPath, body: DeploymentChange, state: StateDep,
                            project: ProjectDep) -> DeploymentPublic:
    """Scale it, or change its version, settings or resources: a change its replicas must
    be replaced for rolls them one at a time (a new one ready before an old one drains)."""
    store = _store(state)
    row = await asyncio.to_thread(ops.update, store, state.registry, name, project=project,
                                  model_ref=body.model, **body.fields())
    await _changed(state)
    replicas = await asyncio.to_thread(store.replicas.list, deployment=name, project=project)
    return _deployment(row, replicas, detail=True)


@router.delete("/api/deployments/{name}", status_code=204, responses=_ERRORS,
               response_class=Response)
@requires(Role.operator)
async def delete_deployment(name: DeploymentPath, state: StateDep,
                            project: ProjectDep) -> Response:
    """Remove it: its replicas drain and stop, its version is unpinned."""
    await asyncio.to_thread(ops.delete, _store(state), state.registry, name, project=project)
    await _changed(state)
    return Response(status_code=204)


class Rebalancing(BaseModel):
    deployments: list[str]
    """The deployments whose replicas will move (one at a time) where the scheduler
    would place them now; their events say what moved."""


@router.post("/api/rebalance", response_model=Rebalancing, status_code=202, responses=_ERRORS)
@requires(Role.operator)
async def rebalance(state: StateDep, project: ProjectDep,
                    deployment: Annotated[str | None, Query(
                        pattern=DEPLOYMENT_PATTERN, description="only this one")] = None
                    ) -> Rebalancing:
    """Move replicas where the scheduler would place them now (after nodes joined, say:
    nothing moves by itself), one at a time: each new replica is ready before the one it
    replaces drains."""
    store = _store(state)
    if deployment is not None:
        names_ = [(await asyncio.to_thread(ops.get, store, deployment, project)).name]
    else:
        names_ = [d.name for d in await asyncio.to_thread(store.list_deployments, project)
                  if d.replicas > 0]
    for name in names_:
        await asyncio.to_thread(store.update_deployment, name, project, rebalance=True)
    await _changed(state)
    return Rebalancing(deployments=names_)


# -- nodes -------------------------------------------------------------------------------


class NodeNotFound(NotFound):
    code = "node_not_found"


async def _get_node(store: Store, name: str) -> Node:
    node = await asyncio.to_thread(store.nodes.get, name)
    if node is None:
        known = ", ".join(n.name for n in await asyncio.to_thread(store.nodes.list))
        raise NodeNotFound(f"no node {name!r}; nodes: {known or 'none'}")
    return node


class JoinBody(BaseModel):
    name: str = Field(pattern=NODE_PATTERN, description="the node's name (an agent's) or "
                      "the worker's id")
    kind: Literal["agent", "worker"]


class Joined(BaseModel):
    name: str
    kind: str
    key_id: str | None
    """The join token it presented (None: the server runs open)."""
    version: str
    cluster: str
    """The cluster's id: an agent heeds only its assignments."""


@router.post("/api/nodes/join", response_model=Joined, responses=_ERRORS)
@requires(Role.node)
async def join(body: JoinBody, request: Request, state: StateDep,
               principal: PrincipalDep) -> Joined:
    """An agent or worker presents its join token (a key with the node role) before it
    takes work; a bad, revoked or expired one gets 401 (and the refusal is logged and
    audited). It presents it again every few seconds, and stops when it is refused."""
    client = request.client.host if request.client else "?"
    await asyncio.to_thread(_store(state).events.add, [Event(
        at=time.time(), kind="join", project="default",
        node=body.name if body.kind == "agent" else None,
        message=f"{body.kind} {body.name} joined from {client} with the join token "
                f"{principal.key_id} ({principal.name})")])
    cluster = await asyncio.to_thread(_store(state).facts.cluster_id)
    return Joined(name=body.name, kind=body.kind, key_id=principal.key_id,
                  version=__version__, cluster=cluster)


class BusPermissions(BaseModel):
    configure: str
    write: str
    read: str
    rabbitmqctl: list[str]
    """The command that grants them to ``user`` (argv: quote each part in a shell)."""


@router.get("/api/nodes/bus-permissions", response_model=BusPermissions, responses=_ERRORS)
@requires(Role.admin)
async def bus_permissions(
    user: Annotated[str, Query(pattern=NODE_PATTERN, description="the node's broker user")],
    deployment: Annotated[list[Annotated[str, Field(pattern=DEPLOYMENT_PATTERN)]] | None,
                          Query(description="the deployments it serves (none given: any, "
                                            "as an agent's replicas)")] = None,
    project: Annotated[str, Query(pattern=PROJECT_PATTERN,
                                  description="the project of those deployments")
                       ] = "default",
    vhost: Annotated[str, Query(max_length=128)] = "/",
) -> BusPermissions:
    """Least-privilege RabbitMQ permissions for a node's own broker user: its
    deployments' requests, the topics it listens and speaks on, and no control command
    (see docs/security.md)."""
    from llmos.bus.permissions import node_permissions

    granted = node_permissions(deployment or None, project)
    return BusPermissions(configure=granted.configure, write=granted.write,
                          read=granted.read, rabbitmqctl=granted.rabbitmqctl(user, vhost))


@router.get("/api/nodes", response_model=NodeList, responses=_ERRORS)
@requires(Role.admin)
async def list_nodes(state: StateDep) -> NodeList:
    """Every node an agent registered, with its state and capacity."""
    rows = await asyncio.to_thread(_store(state).nodes.list)
    return NodeList(data=[_node(n, state) for n in rows])


@router.get("/api/nodes/{name}", response_model=NodePublic, responses=_ERRORS)
@requires(Role.admin)
async def show_node(name: NodePath, state: StateDep) -> NodePublic:
    """A node with the replicas placed on it and its last events."""
    store = _store(state)
    node = await _get_node(store, name)
    replicas = await asyncio.to_thread(store.replicas.list, node=name)
    events = await asyncio.to_thread(store.events.list, node=name, limit=20)
    return _node(node, state, replicas=replicas, events=events)


async def _set_node(gateway: GatewayState, name: str, action: str, **changes: Any
                    ) -> NodePublic:
    store = _store(gateway)
    await _get_node(store, name)
    node = await asyncio.to_thread(store.nodes.update, name, **changes)
    assert node is not None
    await asyncio.to_thread(store.events.add, [Event(
        at=time.time(), kind=action, project="default", node=name,
        message=f"node {name} {action}ed" if action != "drain" else f"node {name} draining: "
        "its replicas move elsewhere one at a time")])
    await _changed(gateway)
    return _node(node, gateway)


@router.post("/api/nodes/{name}/cordon", response_model=NodePublic, responses=_ERRORS)
@requires(Role.admin)
async def cordon_node(name: NodePath, state: StateDep) -> NodePublic:
    """No new replicas go to the node; those on it stay."""
    return await _set_node(state, name, "cordon", cordoned=True)


@router.post("/api/nodes/{name}/uncordon", response_model=NodePublic, responses=_ERRORS)
@requires(Role.admin)
async def uncordon_node(name: NodePath, state: StateDep) -> NodePublic:
    """The node takes new replicas again (and stops draining)."""
    return await _set_node(state, name, "uncordon", cordoned=False, state="ready")


@router.post("/api/nodes/{name}/drain", response_model=NodePublic, responses=_ERRORS)
@requires(Role.admin)
async def drain_node(name: NodePath, state: StateDep) -> NodePublic:
    """Cordon the node and move its replicas elsewhere, one at a time: each is replaced
    by a ready one on another node before it drains."""
    return await _set_node(state, name, "drain", cordoned=True, state="draining")


# -- events ------------------------------------------------------------------------------


@router.get("/api/events", response_model=EventList, responses=_ERRORS)
@requires(Role.operator)
async def list_events(state: StateDep, project: ProjectDep, principal: PrincipalDep,
                      deployment: Annotated[str | None, Query(pattern=DEPLOYMENT_PATTERN)
                                            ] = None,
                      node: Annotated[str | None, Query(pattern=NODE_PATTERN)] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EventList:
    """What changed and what was decided, with reasons, oldest first (both filters:
    the events of that deployment on that node). A node's events span projects: an
    admin's key sees them all, any other its own project's."""
    every = node is not None and principal.role is Role.admin
    rows = await asyncio.to_thread(_store(state).events.list, deployment=deployment,
                                   node=node, project=None if every else project, limit=limit)
    return EventList(data=[_event(e) for e in rows])
