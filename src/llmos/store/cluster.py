"""The cluster's rows besides deployments: nodes, replicas, events, leases and the
cluster's own facts.

Each is a small repository over the store's sessions, reached as ``store.nodes``,
``store.replicas``, ``store.events``, ``store.leases`` and ``store.facts``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmos.store.tables import ClusterFact, Event, Lease, Node, Replica

Sessions = Callable[[], Session]


def _matching(table: type[Replica] | type[Event], *, deployment: str | None,
              node: str | None, project: str | None) -> list[ColumnElement[bool]]:
    """The conditions of the filters given (None: any)."""
    return [column == value for column, value in ((table.deployment, deployment),
                                                  (table.node, node),
                                                  (table.project, project))
            if value is not None]


class Nodes:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def list(self) -> list[Node]:
        with self._sessions() as s:
            return list(s.scalars(select(Node).order_by(Node.name)))

    def get(self, name: str) -> Node | None:
        with self._sessions() as s:
            return s.get(Node, name)

    def seen(self, name: str, *, labels: dict[str, str], capacity: dict[str, Any],
             epoch: str, at: float) -> Node:
        """Record a heartbeat's facts (a new node registers itself so)."""
        with self._sessions() as s, s.begin():
            row = s.get(Node, name)
            if row is None:
                row = Node(name=name, cordoned=False)
                s.add(row)
            row.labels, row.capacity, row.epoch, row.last_seen = labels, capacity, epoch, at
            if row.state in (None, "lost"):
                row.state = "ready"  # (a draining node stays draining)
        return row

    def update(self, name: str, **changes: Any) -> Node | None:
        with self._sessions() as s, s.begin():
            row = s.get(Node, name)
            if row is not None:
                for key, value in changes.items():
                    setattr(row, key, value)
        return row


class Replicas:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def list(self, *, deployment: str | None = None, node: str | None = None,
             project: str | None = None) -> list[Replica]:
        query = select(Replica).order_by(Replica.deployment, Replica.created_at, Replica.id)
        with self._sessions() as s:
            return list(s.scalars(query.where(*_matching(
                Replica, deployment=deployment, node=node, project=project))))

    def deployments_in(self, states: Iterable[str]) -> set[tuple[str, str]]:
        """(project, deployment) of every deployment with a replica in one of ``states``."""
        query = (select(Replica.project, Replica.deployment)
                 .where(Replica.state.in_(list(states))).distinct())
        with self._sessions() as s:
            return {(project, deployment) for project, deployment in s.execute(query)}

    def add(self, replica: Replica) -> None:
        with self._sessions() as s, s.begin():
            s.add(replica)

    def update(self, replica_id: str, **changes: Any) -> None:
        with self._sessions() as s, s.begin():
            row = s.get(Replica, replica_id)
            if row is not None:
                for key, value in changes.items():
                    setattr(row, key, value)

    def remove(self, replica_ids: Iterable[str]) -> None:
        ids = list(replica_ids)
        if ids:
            with self._sessions() as s, s.begin():
                s.execute(delete(Replica).where(Replica.id.in_(ids)))


class Events:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def add(self, events: Iterable[Event]) -> None:
        rows = list(events)
        if rows:
            with self._sessions() as s, s.begin():
                s.add_all(rows)

    def list(self, *, deployment: str | None = None, node: str | None = None,
             project: str | None = None, limit: int = 100) -> list[Event]:
        """The newest ``limit`` events that match, oldest first."""
        query = select(Event).order_by(Event.at.desc(), Event.id.desc()).limit(limit)
        with self._sessions() as s:
            return list(reversed(list(s.scalars(query.where(*_matching(
                Event, deployment=deployment, node=node, project=project))))))


class Leases:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def acquire(self, name: str, holder: str, *, ttl_s: float, now: float) -> int | None:
        """Take or renew the lease ``name`` for ``holder``: its term, or None while
        another holds it. A new holder gets a higher term than any before it."""
        try:
            with self._sessions() as s, s.begin():
                row = s.scalars(select(Lease).where(Lease.name == name)
                                .with_for_update()).first()
                if row is None:
                    s.add(Lease(name=name, holder=holder, term=1, expires_at=now + ttl_s))
                    return 1
                if row.holder != holder:
                    if row.expires_at > now:
                        return None
                    row.holder = holder
                    row.term += 1
                row.expires_at = now + ttl_s
                return row.term
        except IntegrityError:  # another took it first
            return None

    def release(self, name: str, holder: str) -> None:
        with self._sessions() as s, s.begin():
            row = s.scalars(select(Lease).where(Lease.name == name)
                            .with_for_update()).first()
            if row is not None and row.holder == holder:
                row.expires_at = 0.0

    def get(self, name: str) -> Lease | None:
        with self._sessions() as s:
            return s.get(Lease, name)


class Facts:
    """The cluster's own facts, each written once."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def cluster_id(self) -> str:
        """This cluster's id: made by the first caller on this store, the same for every
        control plane sharing it (their orders carry it; a node heeds one cluster's)."""
        return self._once("cluster_id", lambda: uuid.uuid4().hex[:12])

    def _once(self, name: str, make: Callable[[], str]) -> str:
        with self._sessions() as s:
            row = s.get(ClusterFact, name)
            if row is not None:
                return row.value
        try:
            with self._sessions() as s, s.begin():
                s.add(ClusterFact(name=name, value=make()))
        except IntegrityError:  # another wrote it first: theirs stands
            pass
        with self._sessions() as s:
            row = s.get(ClusterFact, name)
            assert row is not None
            return row.value
