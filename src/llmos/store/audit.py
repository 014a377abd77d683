"""The audit log's rows: appended, and read back newest last with filters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from llmos.store.tables import AuditEntry

Sessions = Callable[[], Session]


class Audit:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def add(self, entries: Iterable[AuditEntry]) -> None:
        rows = list(entries)
        if rows:
            with self._sessions() as s, s.begin():
                s.add_all(rows)

    def list(self, *, key_id: str | None = None, project: str | None = None,
             action: str | None = None, since: float | None = None,
             failed: bool = False, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries that match, oldest first (``failed``: only those
        answered with an error status)."""
        where: list[ColumnElement[bool]] = [
            column == value for column, value in ((AuditEntry.key_id, key_id),
                                                  (AuditEntry.project, project),
                                                  (AuditEntry.action, action))
            if value is not None]
        if since is not None:
            where.append(AuditEntry.at >= since)
        if failed:
            where.append(AuditEntry.status >= 400)
        query = (select(AuditEntry).where(*where)
                 .order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit))
        with self._sessions() as s:
            return list(reversed(list(s.scalars(query))))
