"""Which model ids the API serves: the deployments in the store, cached briefly.

The request path never waits for the store while the cache holds the model: a
stale cache is refreshed in the background, a moment after the request that
found it stale (so the read, a thread hop and a query that hold the GIL for
about a millisecond, does not run beside that request's own path), and the
request goes on with what the cache holds. Only a model the cache does not know
waits for a fresh read, so a deployment created a moment ago is found.
"""

from __future__ import annotations

import asyncio
import logging
import time

from llmos.aio import stop_task
from llmos.errors import ModelNotFound, excerpt
from llmos.store import Deployment, Store

log = logging.getLogger(__name__)

STARTING = ("scheduled", "pulling", "starting")
_TTL_S = 2.0
_MIN_FORCED_REFRESH_S = 0.5  # so a flood of unknown model ids cannot flood the database
_REFRESH_DELAY_S = 0.2


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], Deployment] = {}
        self._starting: set[tuple[str, str]] = set()
        self._aliases: dict[tuple[str, str], Deployment] = {}
        self._loaded_at = 0.0
        self._background: asyncio.Task[None] | None = None
        self._scheduled: asyncio.TimerHandle | None = None
        self._reading = asyncio.Lock()

    async def deployments(self, project: str = "default") -> list[Deployment]:
        """The project's deployments."""
        await self._refresh()
        return [d for (p, _), d in sorted(self._cache.items()) if p == project]

    async def get(self, name: str, project: str = "default") -> Deployment:
        """The deployment a model id names: its name, or one of its aliases."""
        deployment = self._cache.get((project, name)) or self._aliases.get((project, name))
        if deployment is not None:
            self._refresh_in_background()
            return deployment
        await self._refresh(force=True)
        deployment = self._cache.get((project, name)) or self._aliases.get((project, name))
        if deployment is None:
            known = ", ".join(sorted(n for (p, n) in self._cache if p == project)) or "none"
            raise ModelNotFound(f"the model {excerpt(name)} does not exist; served models: {known}",
                                param="model")
        return deployment

    def _read(self) -> tuple[list[Deployment], set[tuple[str, str]]]:
        return self.store.list_deployments(), self.store.replicas.deployments_in(STARTING)

    def starting(self, deployment: Deployment) -> bool:
        """Whether a replica of it is being started (placed, pulling or loading), as of
        the last read (``current`` first, where a stale answer matters)."""
        return (deployment.project, deployment.name) in self._starting

    async def current(self) -> None:
        """Read the store now (at most every ``_MIN_FORCED_REFRESH_S``). (``get`` answers
        from the cache at once and refreshes behind it: right for the hot path, but the
        first request after a quiet spell would see the replicas as they were then.) One
        read for many callers; a store that cannot be read leaves the cache as it is."""
        try:
            await self._refresh(force=True)
        except Exception as exc:
            log.warning("could not refresh the model catalog: %s", exc)

    def cached(self, name: str, project: str = "default") -> Deployment | None:
        """What the cache holds for ``name`` (no store read)."""
        return self._cache.get((project, name))

    def invalidate(self) -> None:
        """Read the store again at the next lookup (a deployment changed)."""
        self._loaded_at = 0.0

    async def close(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._background is not None:
            await stop_task(self._background)
            self._background = None

    def _refresh_in_background(self) -> None:
        if time.monotonic() - self._loaded_at < _TTL_S or self._scheduled is not None:
            return
        self._scheduled = asyncio.get_running_loop().call_later(
            _REFRESH_DELAY_S, self._start_refresh)

    def _start_refresh(self) -> None:
        self._scheduled = None
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(
                self._refresh_logged(), name="catalog-refresh")

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except Exception as exc:  # the next request tries again; the cache still serves
            log.warning("could not refresh the model catalog: %s", exc)

    async def _refresh(self, *, force: bool = False) -> None:
        async with self._reading:  # one read at a time; those who waited use it
            age = time.monotonic() - self._loaded_at
            if age < (_MIN_FORCED_REFRESH_S if force else _TTL_S):
                return
            rows, starting = await asyncio.to_thread(self._read)
            self._cache = {(d.project, d.name): d for d in rows}
            self._aliases = {(d.project, alias): d
                             for d in rows for alias in d.aliases or []}
            self._starting = starting
            self._loaded_at = time.monotonic()
