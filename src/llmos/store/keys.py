"""API key rows: made, listed, revoked; and a cheap stamp that moves when any changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmos.auth.keys import new_key
from llmos.auth.roles import Role
from llmos.store.tables import ApiKey, ProjectLimits

Sessions = Callable[[], Session]


class Keys:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def create(self, name: str, role: Role, project: str, *, now: float,
               expires_at: float | None = None,
               limits: dict[str, Any] | None = None) -> tuple[ApiKey, str]:
        """A new key, and the token its holder sends (shown once: only its hash stays)."""
        made = new_key()
        row = ApiKey(id=made.key_id, name=name, role=role.name, project=project,
                     secret_sha256=made.secret_sha256, created_at=now, expires_at=expires_at,
                     revoked_at=None, changed_at=now, limits=dict(limits or {}))
        with self._sessions() as s, s.begin():
            s.add(row)
        return row, made.token

    def list(self, project: str | None = None) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if project is not None:
            query = query.where(ApiKey.project == project)
        with self._sessions() as s:
            return list(s.scalars(query))

    def get(self, key_id: str) -> ApiKey | None:
        with self._sessions() as s:
            return s.get(ApiKey, key_id)

    def revoke(self, key_id: str, now: float) -> ApiKey | None:
        with self._sessions() as s, s.begin():
            row = s.get(ApiKey, key_id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = now
                row.changed_at = now
        return row

    def stamp(self) -> tuple[int, float, float]:
        """How many keys there are, when the last changed and when a project's limits
        last changed: reload when it moves."""
        with self._sessions() as s:
            count, newest = s.execute(select(func.count(ApiKey.id),
                                             func.max(ApiKey.changed_at))).one()
            limits = s.execute(select(func.max(ProjectLimits.changed_at))).scalar()
        return int(count), float(newest or 0.0), float(limits or 0.0)

    def set_limits(self, key_id: str, limits: dict[str, Any], now: float) -> ApiKey | None:
        with self._sessions() as s, s.begin():
            row = s.get(ApiKey, key_id)
            if row is not None:
                row.limits = dict(limits)
                row.changed_at = now
        return row

    def project_limits(self) -> dict[str, dict[str, Any]]:
        with self._sessions() as s:
            return {row.project: dict(row.limits) for row in s.scalars(select(ProjectLimits))}

    def set_project_limits(self, project: str, limits: dict[str, Any], now: float) -> None:
        with self._sessions() as s, s.begin():
            row = s.get(ProjectLimits, project)
            if row is None:
                s.add(ProjectLimits(project=project, limits=dict(limits), changed_at=now))
            else:
                row.limits = dict(limits)
                row.changed_at = now
