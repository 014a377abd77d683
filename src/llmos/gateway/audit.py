"""The audit log: every management action (a change through ``/api/``) and every
refused ``/api/`` request, with who (the key), what (endpoint and path), when, from
where (the client's address) and the result (the HTTP status), kept in the store.

``AuditTrail`` is a pure ASGI middleware outside authentication, so it sees the 401s
too (the key id a refused token claimed is kept: the id is not the secret). Entries
are written by one background task in batches, off the request path; if the store
falls behind by 10,000 entries, the newest are dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos.aio import stop_task
from llmos.auth.keys import parse
from llmos.auth.roles import Principal
from llmos.gateway.auth import bearer
from llmos.store import Store
from llmos.store.tables import AuditEntry

log = logging.getLogger(__name__)

_READS = {"GET", "HEAD", "OPTIONS"}
_BACKLOG = 10_000


def audited(method: str, path: str, status: int) -> bool:
    """A change through the management API, or any management request refused for
    want of a key or of a role."""
    return path.startswith("/api/") and (method not in _READS or status in (401, 403))


class AuditWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(_BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def offer(self, entry: AuditEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("audit entry dropped (the store is %d behind): %s %s %d",
                        _BACKLOG, entry.method, entry.path, entry.status)

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name="audit-writer")

    async def stop(self) -> None:
        """Writes what is queued, then stops."""
        if self._task is None:
            return
        await self._flush()
        await stop_task(self._task)
        self._task = None

    async def _write(self) -> None:
        while True:
            first = await self._queue.get()
            await self._store([first, *self._drain()])

    def _drain(self) -> list[AuditEntry]:
        batch: list[AuditEntry] = []
        while not self._queue.empty() and len(batch) < 500:
            batch.append(self._queue.get_nowait())
        return batch

    async def _flush(self) -> None:
        while not self._queue.empty():
            await self._store(self._drain())

    async def _store(self, batch: list[AuditEntry]) -> None:
        try:
            await asyncio.to_thread(self.store.audit.add, batch)
        except Exception as exc:
            self.dropped += len(batch)
            log.warning("could not write %d audit entries: %s", len(batch), exc)


class AuditTrail:
    def __init__(self, app: ASGIApp, *, writer: AuditWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            if audited(scope["method"], scope["path"], status):
                self.writer.offer(_entry(scope, status))


def _entry(scope: Scope, status: int) -> AuditEntry:
    state = scope.get("state", {})
    principal: Principal | None = state.get("principal")
    key_id = principal.key_id if principal is not None else _claimed(scope)
    endpoint = scope.get("endpoint")
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope["path"] + (f"?{query}" if query else "")
    client = scope.get("client")
    return AuditEntry(
        at=time.time(), key_id=key_id,
        key_name=principal.name if principal is not None else None,
        role=principal.role.name if principal is not None else None,
        project=principal.project if principal is not None else None,
        method=scope["method"], path=path[:512],
        action=getattr(endpoint, "__name__", None), status=status,
        client=client[0] if client else None, request_id=state.get("request_id"))


def _claimed(scope: Scope) -> str | None:
    """The key id a refused bearer token names (its public half), if it is well formed."""
    parsed = parse(bearer(scope) or "")
    return parsed[0] if parsed else None
