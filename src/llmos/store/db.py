"""The SQL store: connection, Alembic migrations, and the queries other modules use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from llmos.store.audit import Audit
from llmos.store.cluster import Events, Facts, Leases, Nodes, Replicas
from llmos.store.grants import Grants
from llmos.store.keys import Keys
from llmos.store.tables import Deployment
from llmos.store.usage import Usage

MIGRATIONS = Path(__file__).with_name("migrations")


class Store:
    def __init__(self, url: str) -> None:
        url = normalize_url(url)
        self.url = url
        connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.engine: Engine = create_engine(url, connect_args=connect_args,
                                            pool_pre_ping=not url.startswith("sqlite"))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.nodes = Nodes(self._sessions)
        self.replicas = Replicas(self._sessions)
        self.events = Events(self._sessions)
        self.leases = Leases(self._sessions)
        self.facts = Facts(self._sessions)
        self.keys = Keys(self._sessions)
        self.grants = Grants(self._sessions)
        self.audit = Audit(self._sessions)
        self.usage = Usage(self._sessions)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # deployments -------------------------------------------------------------------

    def list_deployments(self, project: str | None = None) -> list[Deployment]:
        with self.session() as s:
            query = select(Deployment).order_by(Deployment.project, Deployment.name)
            if project is not None:
                query = query.where(Deployment.project == project)
            return list(s.scalars(query))

    def get_deployment(self, name: str, project: str = "default") -> Deployment | None:
        with self.session() as s:
            return s.scalars(select(Deployment).where(
                Deployment.project == project, Deployment.name == name)).first()

    def upsert_deployment(self, name: str, model_ref: str, *, project: str = "default",
                          engine: str = "llama.cpp",
                          engine_settings: dict[str, Any] | None = None,
                          replicas: int = 1, **fields: Any) -> Deployment:
        with self.session() as s, s.begin():
            row = s.scalars(select(Deployment).where(
                Deployment.project == project, Deployment.name == name)).first()
            if row is None:
                row = Deployment(project=project, name=name)
                s.add(row)
            row.model_ref = model_ref
            # (model_version keeps the pinned version until the new reference is pinned)
            row.engine = engine
            row.engine_settings = dict(engine_settings or {})
            row.replicas = replicas
            for key, value in fields.items():  # in the same transaction
                setattr(row, key, value)
        return row

    def set_model_version(self, name: str, model_version: str, *,
                          project: str = "default") -> None:
        with self.session() as s, s.begin():
            row = s.scalars(select(Deployment).where(
                Deployment.project == project, Deployment.name == name)).first()
            if row is not None:
                row.model_version = model_version

    def update_deployment(self, name: str, project: str = "default",
                          **changes: Any) -> Deployment | None:
        with self.session() as s, s.begin():
            row = s.scalars(select(Deployment).where(
                Deployment.project == project, Deployment.name == name)).first()
            if row is not None:
                for key, value in changes.items():
                    setattr(row, key, value)
        return row

    def delete_deployment(self, name: str, project: str = "default") -> bool:
        with self.session() as s, s.begin():
            result = s.execute(delete(Deployment).where(
                Deployment.project == project, Deployment.name == name))
            return bool(result.rowcount)  # type: ignore[attr-defined]


def normalize_url(url: str) -> str:
    """``postgresql://`` means the psycopg 3 driver (SQLAlchemy's default is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
