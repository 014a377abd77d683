"""ORM tables. Every stored object carries a ``project`` (default ``default``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now,
                                                 onupdate=_now)

    @property
    def served_ref(self) -> str:
        """What replicas load: the pinned version, or the reference until it is pinned."""
        return self.model_version or self.model_ref
