"""What the gateway's routes share: settings, the dispatcher, the model catalog, readiness."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.gateway.audit import AuditWriter
from llmos.gateway.auth import KeyBook
from llmos.gateway.catalog import Catalog
from llmos.gateway.control import WorkerControl
from llmos.gateway.dispatch import Dispatcher
from llmos.gateway.metering import UsageBook
from llmos.gateway.traffic import TrafficMeter
from llmos.registry.local import LocalRegistry
from llmos.settings import EngineSettings, Settings
from llmos.store import Deployment


@dataclass
class GatewayState:
    settings: Settings
    keys: KeyBook
    audit: AuditWriter
    usage: UsageBook
    dispatcher: Dispatcher
    catalog: Catalog
    workers: WorkerControl
    registry: LocalRegistry
    traffic: TrafficMeter
    probe_model: str | None = None
    """The model whose first answer makes this gateway ready (none: a control plane)."""
    ready: bool = False
    probe_error: str | None = None
    """The error a worker last answered the readiness probe with."""
    verified_blobs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Blobs hashed since this process started, with the (inode, size, mtime) seen then."""
    _engine_settings: dict[tuple[str, str, str], EngineSettings] = field(default_factory=dict)

    def replica_wait_s(self, deployment: Deployment | None) -> float:
        """How long a request waits for a replica: longer while one of the deployment's
        replicas is being started (placed, its model loading), or it is autoscaled (at
        zero, a request waits through the cold start it sets off)."""
        limits = self.settings.limits
        if deployment is not None and (deployment.autoscale
                                       or self.catalog.starting(deployment)):
            return max(limits.no_replica_wait_s, limits.starting_replica_wait_s)
        return limits.no_replica_wait_s

    def engine_settings(self, deployment: Deployment) -> EngineSettings:
        """The deployment's engine settings over the server's defaults (cached: hot path)."""
        overrides = dict(deployment.engine_settings or {})
        key = (deployment.project, deployment.name, repr(sorted(overrides.items())))
        cached = self._engine_settings.get(key)
        if cached is None:
            cached = self.settings.engine.overlay(overrides)
            self._engine_settings[key] = cached
        return cached


def no_replica_message(deployment: Deployment) -> str:
    """The 503's words: the deployment, and what state it is in."""
    if deployment.replicas == 0 and deployment.autoscale:
        why = "it is scaled to 0 replicas and none started in time"
    elif deployment.replicas == 0:
        why = "it is scaled to 0 replicas"
    elif deployment.message:
        why = deployment.message
    else:
        why = "none is running or ready yet, or every one is drained"
    return f"no replica of deployment {deployment.name!r} takes requests now: {why}; retry later"
