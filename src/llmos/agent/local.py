"""The embedded agent: runs replicas as Workers inside this process.

The networked agent (``llmos agent``) will take the same commands over the bus
and start ``llmos worker`` processes instead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from llmos.bus import Bus
from llmos.engines import EngineConfig, load_engine
from llmos.registry import LocalRegistry
from llmos.settings import EngineSettings
from llmos.store import Deployment
from llmos.worker.worker import Worker

log = logging.getLogger(__name__)


def engine_config(settings: EngineSettings, model_path: Path) -> EngineConfig:
    return EngineConfig(
        model_path=model_path, slots=settings.slots, threads=settings.threads,
        batch_threads=settings.batch_threads, ctx_size=settings.ctx_size,
        kv_unified=settings.kv_unified, batch_size=settings.batch_size,
        cache_ram_mib=settings.cache_ram_mib,
        poll=settings.poll, log_verbosity=settings.log_verbosity,
        merge_max_tokens=settings.merge_max_tokens)


@dataclass
class Replica:
    deployment: str
    model_ref: str
    worker: Worker


class LocalAgent:
    def __init__(self, bus: Bus, registry: LocalRegistry, defaults: EngineSettings) -> None:
        self.bus = bus
        self.registry = registry
        self.defaults = defaults
        self.replicas: dict[str, Replica] = {}

    def engine_config(self, deployment: Deployment) -> EngineConfig:
        settings = EngineSettings.model_validate(
            self.defaults.model_dump() | dict(deployment.engine_settings or {}))
        version = self.registry.get(deployment.served_ref, project=deployment.project)
        return engine_config(settings, self.registry.weights_path(version))

    async def start_replica(self, deployment: Deployment) -> Replica:
        config = self.engine_config(deployment)
        engine = await asyncio.to_thread(load_engine, deployment.engine, config)
        worker = Worker(self.bus, engine, deployment.name)
        await worker.start()
        replica = Replica(deployment.name, deployment.served_ref, worker)
        self.replicas[deployment.name] = replica
        return replica

    async def stop_replica(self, name: str) -> None:
        replica = self.replicas.pop(name, None)
        if replica is None:
            return
        await replica.worker.stop()
        await asyncio.to_thread(replica.worker.engine.close)

    async def stop_all(self) -> None:
        for name in list(self.replicas):
            await self.stop_replica(name)
