"""What the gateway's routes share: settings, the dispatcher, the model catalog, readiness."""

from __future__ import annotations

from dataclasses import dataclass

from llmos.gateway.catalog import Catalog
from llmos.gateway.dispatch import Dispatcher
from llmos.settings import EngineSettings, Settings
from llmos.store import Deployment


@dataclass
class GatewayState:
    settings: Settings
    dispatcher: Dispatcher
    catalog: Catalog
    ready: bool = False
    ready_detail: str = "the default model has not answered yet"

    def engine_settings(self, deployment: Deployment) -> EngineSettings:
        merged = self.settings.engine.model_dump() | dict(deployment.engine_settings or {})
        return EngineSettings.model_validate(merged)
