"""The registry's locks between processes on one node: ``flock`` files under
``<root>/locks``.

Writers hold ``store`` shared from their first blob to their manifest, and gc holds it
exclusively, so gc never takes a blob a version is about to name. A repository's lock
orders the writes of its versions and tags; a blob's pull lock makes one process pull
it while the others wait and find it there.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from llmos.registry.blobs import storage_error


class StoreLocks:
    def __init__(self, root: Path) -> None:
        self.root = root

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Held from a writer's first blob to its manifest: gc waits for it."""
        return self._lock("store", fcntl.LOCK_SH)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        """Held by gc: no writer is between its first blob and its manifest."""
        return self._lock("store", fcntl.LOCK_EX)

    def repository(self, project: str, name: str) -> contextlib.AbstractContextManager[None]:
        return self._lock(f"repo-{project}-{name.replace('/', '--')}", fcntl.LOCK_EX)

    def pull(self, digest: str) -> contextlib.AbstractContextManager[None]:
        return self._lock(f"pull-{digest.removeprefix('sha256:')}", fcntl.LOCK_EX)

    @contextlib.contextmanager
    def _lock(self, name: str, mode: int) -> Iterator[None]:
        path = self.root / "locks" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
        except OSError as exc:
            raise storage_error(exc, self.root) from exc
        with handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
