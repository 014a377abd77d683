"""Usage windows and requests in flight, shared by the gateways through the store.

Each gateway counts locally and, every half second (every 5 s while no limit is set),
hands its new counts to ``exchange`` (added in one transaction) and gets back what all
gateways together have counted for the scopes it cares about: the store is where
limits meet, off the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from llmos.store.tables import InFlight, UsageWindow

Sessions = Callable[[], Session]
Window = tuple[str, str, int]
"""(scope, kind ``m`` or ``d``, window start)."""


def _upsert(session: Session, table: Any, keys: dict[str, Any], add: dict[str, int] | None,
            put: dict[str, Any] | None = None) -> None:
    """Insert the row, or add ``add`` to (and set ``put`` on) the one that exists."""
    dialect = session.get_bind().dialect.name
    values = {**keys, **(add or {}), **(put or {})}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(table).values(**values)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).values(**values)  # type: ignore[assignment]
    changes: dict[str, Any] = {name: getattr(table, name) + statement.excluded[name]
                               for name in (add or {})}
    changes.update({name: statement.excluded[name] for name in (put or {})})
    session.execute(statement.on_conflict_do_update(index_elements=list(keys),
                                                    set_=changes))


class Usage:
    keeps_records = True
    """Its counts are the usage records too (``days``)."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def record(self, added: dict[Window, tuple[int, int]]) -> None:
        """Adds counts (where another place shares the limits' counts: the days only)."""
        with self._sessions() as s, s.begin():
            self._add(s, added)

    @staticmethod
    def _add(s: Session, added: dict[Window, tuple[int, int]]) -> None:
        for (scope, kind, start), (requests, tokens) in added.items():
            _upsert(s, UsageWindow, {"scope": scope, "kind": kind, "start": start},
                    {"requests": requests, "tokens": tokens})

    def exchange(self, gateway: str, added: dict[Window, tuple[int, int]],
                 in_flight: dict[str, int], *, minute: int, day: int,
                 now: float, fresh_s: float) -> tuple[dict[Window, tuple[int, int]],
                                                      dict[str, int]]:
        """Adds this gateway's new counts and its requests in flight; returns every
        gateway's counts of every scope in the previous and current minute and today
        (a scope new to this gateway is known before its first request), and the other
        gateways' requests in flight (reported within ``fresh_s``)."""
        with self._sessions() as s, s.begin():
            self._add(s, added)
            for scope, count in in_flight.items():
                _upsert(s, InFlight, {"gateway": gateway, "scope": scope}, None,
                        {"count": count, "updated_at": now})
            rows = s.execute(select(UsageWindow).where(
                or_(and_(UsageWindow.kind == "m", UsageWindow.start >= minute - 60),
                    and_(UsageWindow.kind == "d", UsageWindow.start == day)))).scalars()
            totals = {(r.scope, r.kind, r.start): (r.requests, r.tokens) for r in rows}
            others = dict(s.execute(
                select(InFlight.scope, func.sum(InFlight.count))
                .where(InFlight.gateway != gateway, InFlight.count > 0,
                       InFlight.updated_at >= now - fresh_s)
                .group_by(InFlight.scope)).all())
        return totals, {scope: int(count or 0) for scope, count in others.items()}

    def close(self) -> None:
        """Nothing of its own to close (the store's engine is the store's)."""

    def prune(self, before_minute: int, gone_before: float) -> None:
        """Minute windows before ``before_minute``, and in-flight reports of gateways
        silent since ``gone_before``."""
        with self._sessions() as s, s.begin():
            s.execute(delete(UsageWindow).where(UsageWindow.kind == "m",
                                                UsageWindow.start < before_minute))
            s.execute(delete(InFlight).where(InFlight.updated_at < gone_before))

    def days(self, scopes: Iterable[str] | None = None, prefix: str | None = None,
             since: int = 0) -> list[UsageWindow]:
        """Daily windows since the day starting at ``since``: of ``scopes``, or of every
        scope that starts with ``prefix``."""
        query = select(UsageWindow).where(UsageWindow.kind == "d", UsageWindow.start >= since)
        if scopes is not None:
            query = query.where(UsageWindow.scope.in_(list(scopes)))
        if prefix is not None:
            query = query.where(UsageWindow.scope.startswith(prefix))
        with self._sessions() as s:
            return list(s.scalars(query.order_by(UsageWindow.start, UsageWindow.scope)))
