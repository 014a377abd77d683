"""ORM tables. Every stored object carries a ``project`` (default ``default``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Deployment(Base):
    """Desired state: serve ``model_ref`` under the API model id ``name``."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("project", "name", name="uq_deployments_project_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(64), default="default", nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    model_ref: Mapped[str] = mapped_column(String(256), nullable=False)
    model_version: Mapped[str | None] = mapped_column(String(300), nullable=True)
    """The version ``model_ref`` resolved to (``name@N``), pinned in the registry."""
    engine: Mapped[str] = mapped_column(String(32), default="llama.cpp", nullable=False)
    engine_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    replicas: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    """What one replica needs (cpu, memory, gpus) where the user said; the rest is the
    registry's estimate for the engine settings."""
    node_selector: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, nullable=False)
    strategy: Mapped[str] = mapped_column(String(16), default="spread", nullable=False)
    anti_affinity: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    priority: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    generation: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    """Bumped by each change its replicas must be replaced for (version, settings,
    resources): replicas of an older generation are rolled one at a time."""
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Why it is not fully placed (the scheduler's summary), or None."""
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list, nullable=False)
    """More model ids the API serves it under."""
    rebalance: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    """Asked to move its replicas where the scheduler would place them now (one at a
    time); cleared when they are there."""
    autoscale: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Opted in to autoscaling: its bounds and objective (``autoscale.policy.Bounds``'
    fields); None: its replica count is what was asked for."""
    autoscale_status: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The autoscaler's last look: what it measured, decided and why."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now,
                                                 onupdate=_now)

    @property
    def served_ref(self) -> str:
        """What replicas load: the pinned version, or the reference until it is pinned."""
        return self.model_version or self.model_ref


class Node(Base):
    """A machine an agent registered; liveness is its heartbeats, not this row."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, nullable=False)
    capacity: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    cordoned: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    state: Mapped[str] = mapped_column(String(16), default="ready", nullable=False)
    """``ready`` or ``lost`` (as the active controller last judged it)."""
    epoch: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    last_seen: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Replica(Base):
    """One placed replica of a deployment: on which node, of which generation, in which
    state (``scheduled``, ``pulling``, ``starting``, ``ready``, ``failed``)."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), default="default", nullable=False)
    deployment: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    node: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    model_version: Mapped[str] = mapped_column(String(300), nullable=False)
    engine_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    reserved: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    state: Mapped[str] = mapped_column(String(16), default="scheduled", nullable=False)
    rss: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    restarts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now,
                                                 onupdate=_now)


class Event(Base):
    """A change or a decision, with its reason: what ``llmos events`` shows."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    project: Mapped[str] = mapped_column(String(64), default="default", nullable=False)
    deployment: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    node: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    replica: Mapped[str | None] = mapped_column(String(160), nullable=True)
    message: Mapped[str] = mapped_column(Text, nullable=False)


class Lease(Base):
    """Who holds a role (the active controller) until when; ``term`` grows with each
    new holder, and orders carry it so that a deposed holder's are ignored."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    term: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    expires_at: Mapped[float] = mapped_column(Float, nullable=False)


class ClusterFact(Base):
    """One fact about the cluster itself, by name: ``cluster_id``, made once by the
    first control plane on this store and shared by every one after it."""

    __tablename__ = "cluster_facts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), nullable=False)


class ApiKey(Base):
    """An API key: who holds it (its name), what it may do (role, project) and until
    when. Only the SHA-256 of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    project: Mapped[str] = mapped_column(String(64), default="default", nullable=False)
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    changed_at: Mapped[float] = mapped_column(Float, nullable=False, index=True)
    """Made or revoked: gateways reload their keys when the newest of these moves."""
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    """Its rate limits and quota (rpm, tpm, concurrent, tokens_per_day; none: no limit)."""


class BlobGrant(Base):
    """A key of ``project`` uploaded the blob ``digest``: that project may use it."""

    __tablename__ = "blob_grants"

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[float] = mapped_column(Float, nullable=False)


class AuditEntry(Base):
    """A management action: who (key), what (endpoint, path), when, from where (client
    address) and its result (HTTP status)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, nullable=False, index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    key_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(String(512), nullable=False)
    action: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    """The endpoint's name (``create_deployment``), or none when no route matched."""
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ProjectLimits(Base):
    """A project's rate limits and quota, over all its keys together."""

    __tablename__ = "project_limits"

    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    changed_at: Mapped[float] = mapped_column(Float, nullable=False)


class UsageWindow(Base):
    """Requests and tokens of one scope (``key:ID``, ``project:NAME``) in one window: a
    minute (``m``, for rates) or a UTC day (``d``, for quotas and usage)."""

    __tablename__ = "usage"

    scope: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(1), primary_key=True)
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    tokens: Mapped[int] = mapped_column(Integer, default=0, nullable=False)


class InFlight(Base):
    """Requests one gateway has in flight for one scope, as of ``updated_at``."""

    __tablename__ = "in_flight"

    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(96), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
