"""How an agent runs replicas: the protocol, and the in-process runner of ``llmos serve``.

A runner starts a replica in the background (``start`` returns at once), reports each
replica's state, and stops one by draining it: it takes no new requests, those in
flight finish (up to ``drain_s``; what is left goes back to the queue), then it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from llmos import providers
from llmos.aio import stop_task
from llmos.bus import Bus, names
from llmos.bus.messages import ReplicaPhase, ReplicaSpec, ReplicaStatus
from llmos.engines import EngineConfig, load_engine
from llmos.errors import LLMOSError
from llmos.registry.local import LocalRegistry
from llmos.registry.manifest import ModelVersion
from llmos.registry.templates import choose
from llmos.settings import EngineSettings
from llmos.worker.worker import Worker

log = logging.getLogger(__name__)

DRAIN_S = 30.0


Notify = Callable[[], None]
"""Called when a replica's state changes (the agent then reports at once)."""


class Runner(Protocol):
    on_change: Notify | None

    async def start(self, spec: ReplicaSpec) -> None: ...

    async def stop(self, replica_id: str) -> None: ...

    def running(self) -> set[str]: ...

    def statuses(self) -> list[ReplicaStatus]: ...

    def cached(self) -> list[str]: ...

    async def close(self) -> None: ...


def engine_config(settings: EngineSettings, registry: LocalRegistry,
                  version: ModelVersion) -> EngineConfig:
    """How to load ``version`` under ``settings``: its weights and its chat template
    (``registry.templates``), with the engine settings."""
    model_format = (version.config or {}).get("format")
    if model_format == providers.FORMAT:
        # The worker's slots are the requests it has in flight upstream at once.
        return EngineConfig(model_path=registry.files.materialize(version) / providers.FILENAME,
                            slots=settings.slots, threads=1, ctx_size=0,
                            embedding=settings.embedding)
    if model_format == "transformers":  # vLLM: one sequence may use the whole context
        return EngineConfig(model_path=registry.files.materialize(version), slots=settings.slots,
                            threads=settings.threads, ctx_size=settings.ctx_size,
                            kv_unified=True, embedding=settings.embedding,
                            chat_template=settings.chat_template or "")
    if model_format == "sentence-transformers":
        return EngineConfig(model_path=registry.files.materialize(version), slots=settings.slots,
                            threads=settings.threads, embedding=True,
                            batch_wait_ms=settings.batch_wait_ms)
    template = choose(version, settings.chat_template, files=registry.files.materialize(version))
    log.info("%s: chat template %s (%s)", version.ref, template.name, template.source)
    if template.source == "fallback":
        log.warning("%s: %s", version.ref, template.describe()["warning"])
    return EngineConfig(model_path=registry.files.weights_path(version),
                        chat_template=template.text or "", **settings.options())


@dataclass
class _Replica:
    spec: ReplicaSpec
    state: ReplicaPhase = "starting"
    message: str | None = None
    worker: Worker | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


async def drain_and_stop(worker: Worker, drain_s: float = DRAIN_S) -> None:
    """No new requests; those in flight finish (up to ``drain_s``), then stop."""
    await worker.drain()
    deadline = time.monotonic() + drain_s
    while worker.busy_slots and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await worker.stop()


class InProcessRunner:
    """Replicas as Workers in this process, on the registry this process opened."""

    def __init__(self, bus: Bus, registry: LocalRegistry, defaults: EngineSettings, *,
                 drain_s: float = DRAIN_S) -> None:
        self.bus = bus
        self.registry = registry
        self.defaults = defaults
        self.drain_s = drain_s
        self.on_change: Notify | None = None
        self._replicas: dict[str, _Replica] = {}

    async def start(self, spec: ReplicaSpec) -> None:
        replica = _Replica(spec)
        self._replicas[spec.replica_id] = replica
        replica.task = asyncio.create_task(self._run(replica), name=f"start-{spec.replica_id}")

    async def _run(self, replica: _Replica) -> None:
        spec = replica.spec
        try:
            settings = self.defaults.overlay(spec.settings)
            version = await asyncio.to_thread(self.registry.catalog.get, spec.model,
                                              project=spec.project)
            config = await asyncio.to_thread(engine_config, settings, self.registry, version)
            engine = await asyncio.to_thread(load_engine, spec.engine, config)
            worker = Worker(self.bus, engine, names.bus_name(spec.deployment, spec.project),
                            worker_id=spec.replica_id)
            await worker.start()
            replica.worker, replica.state = worker, "ready"
            log.info("replica %s of %s ready", spec.replica_id, spec.deployment)
            self._changed()
        except asyncio.CancelledError:
            raise
        except (LLMOSError, ValueError, OSError, RuntimeError) as exc:
            message = exc.message if isinstance(exc, LLMOSError) else str(exc)
            replica.state, replica.message = "failed", message
            log.error("replica %s of %s failed to start: %s", spec.replica_id,
                      spec.deployment, message)
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def stop(self, replica_id: str) -> None:
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        replica.state = "stopping"
        if replica.task is not None and not replica.task.done():
            await stop_task(replica.task)
        worker = replica.worker
        if worker is not None:
            await drain_and_stop(worker, self.drain_s)
            await asyncio.to_thread(worker.engine.close)
        self._replicas.pop(replica_id, None)
        log.info("replica %s of %s stopped", replica_id, replica.spec.deployment)

    def running(self) -> set[str]:
        return {rid for rid, r in self._replicas.items() if r.state != "stopping"}

    def statuses(self) -> list[ReplicaStatus]:
        return [ReplicaStatus(replica_id=rid, deployment=r.spec.deployment,
                              generation=r.spec.generation, state=r.state,
                              message=r.message)
                for rid, r in self._replicas.items()]

    def cached(self) -> list[str]:
        return []  # every version in this process's registry is at hand

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(rid) for rid in list(self._replicas)))
