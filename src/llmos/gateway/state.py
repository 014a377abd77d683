"""What the gateway's routes share: settings, the dispatcher, the model catalog, readiness."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.gateway.catalog import Catalog
from llmos.gateway.control import WorkerControl
from llmos.gateway.dispatch import Dispatcher
from llmos.registry import LocalRegistry
from llmos.settings import EngineSettings, Settings
from llmos.store import Deployment


@dataclass
class GatewayState:
    settings: Settings
    dispatcher: Dispatcher
    catalog: Catalog
    workers: WorkerControl
    registry: LocalRegistry
    ready: bool = False
    ready_detail: str = "the default model has not answered yet"
    verified_blobs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Blobs hashed since this process started, with the (inode, size, mtime) seen then."""
    _engine_settings: dict[tuple[str, str, str], EngineSettings] = field(default_factory=dict)

    def engine_settings(self, deployment: Deployment) -> EngineSettings:
        """The deployment's engine settings over the server's defaults (cached: hot path)."""
        overrides = dict(deployment.engine_settings or {})
        key = (deployment.project, deployment.name, repr(sorted(overrides.items())))
        cached = self._engine_settings.get(key)
        if cached is None:
            cached = EngineSettings.model_validate(self.settings.engine.model_dump() | overrides)
            self._engine_settings[key] = cached
        return cached
