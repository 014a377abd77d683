"""Blob grants: which projects' keys uploaded which blobs.

Blobs are content-addressed and shared by every project (one copy of a file, whoever
uploads it). A key outside the admin role may name in a new version, or download, a
blob that its project's versions already name, or that a key of its project uploaded:
it has shown it holds the content. Knowing a digest alone is not enough.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmos.store.tables import BlobGrant

Sessions = Callable[[], Session]


class Grants:
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def grant(self, digest: str, project: str, now: float) -> None:
        with self._sessions() as s, s.begin():
            if s.get(BlobGrant, (digest, project)) is None:
                s.add(BlobGrant(digest=digest, project=project, granted_at=now))

    def granted(self, digests: Iterable[str], project: str) -> set[str]:
        """Those of ``digests`` a key of ``project`` uploaded."""
        wanted = list(digests)
        if not wanted:
            return set()
        with self._sessions() as s:
            return set(s.scalars(select(BlobGrant.digest).where(
                BlobGrant.project == project, BlobGrant.digest.in_(wanted))))
