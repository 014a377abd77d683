"""Reconciles the deployments in the store with the replicas the agent runs.

Minimal form: one node (the embedded agent), one replica per deployment. The
scheduler and autoscaler plug in here later.
"""

from __future__ import annotations

import asyncio
import logging

from llmos.agent.local import LocalAgent
from llmos.controller.deployments import pin
from llmos.errors import LLMOSError
from llmos.store import Store

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, store: Store, agent: LocalAgent) -> None:
        self.store = store
        self.agent = agent
        self.failures: dict[str, str] = {}

    async def run_once(self) -> None:
        desired = {d.name: d for d in await asyncio.to_thread(self.store.list_deployments)
                   if d.replicas > 0}
        for name, deployment in list(desired.items()):
            if deployment.model_version:
                continue
            try:  # a deployment made elsewhere is pinned before a replica loads it
                desired[name] = await asyncio.to_thread(
                    pin, self.store, self.agent.registry, deployment)
            except LLMOSError as exc:
                self._failed(name, exc)
                del desired[name]
        for name, replica in list(self.agent.replicas.items()):
            wanted = desired.get(name)
            if wanted is None or wanted.served_ref != replica.model_ref:
                log.info("stopping replica of %s", name)
                await self.agent.stop_replica(name)
        for name, deployment in desired.items():
            if name in self.agent.replicas:
                continue
            try:
                log.info("starting a replica of %s (%s)", name, deployment.served_ref)
                await self.agent.start_replica(deployment)
                self.failures.pop(name, None)
            except LLMOSError as exc:
                self._failed(name, exc)

    def _failed(self, name: str, exc: LLMOSError) -> None:
        if self.failures.get(name) != exc.message:
            log.error("cannot start %s: %s", name, exc.message)
        self.failures[name] = exc.message

    async def run(self, interval_s: float = 5.0) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval_s)
