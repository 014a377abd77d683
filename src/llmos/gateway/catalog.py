"""Which model ids the API serves: the deployments in the store, cached briefly."""

from __future__ import annotations

import asyncio
import time

from llmos.errors import ModelNotFound
from llmos.store import Deployment, Store

_TTL_S = 2.0
_MIN_FORCED_REFRESH_S = 0.5  # so a flood of unknown model ids cannot flood the database


class Catalog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[tuple[str, str], Deployment] = {}
        self._loaded_at = 0.0

    async def deployments(self, project: str = "default", *,
                          fresh: bool = False) -> list[Deployment]:
        """The project's deployments; ``fresh`` reads the store now (for a decision)."""
        if fresh:
            self._loaded_at = 0.0
        await self._refresh()
        return [d for (p, _), d in sorted(self._cache.items()) if p == project]

    async def get(self, name: str, project: str = "default") -> Deployment:
        await self._refresh()
        deployment = self._cache.get((project, name))
        if deployment is None:
            await self._refresh(force=True)
            deployment = self._cache.get((project, name))
        if deployment is None:
            known = ", ".join(sorted(n for (p, n) in self._cache if p == project)) or "none"
            raise ModelNotFound(f"the model {name!r} does not exist; served models: {known}",
                                param="model")
        return deployment

    async def _refresh(self, *, force: bool = False) -> None:
        age = time.monotonic() - self._loaded_at
        if age < (_MIN_FORCED_REFRESH_S if force else _TTL_S):
            return
        rows = await asyncio.to_thread(self._store.list_deployments)
        self._cache = {(d.project, d.name): d for d in rows}
        self._loaded_at = time.monotonic()
