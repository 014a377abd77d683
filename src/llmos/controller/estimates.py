"""What one replica of a deployment needs: what its user set, else the registry's
estimate for its engine settings (a prior: measured RSS corrects it in the scheduler)."""

from __future__ import annotations

import json

from llmos.registry.estimate import estimate_resources
from llmos.registry.local import LocalRegistry
from llmos.scheduler.model import Resources
from llmos.settings import EngineSettings
from llmos.store import Deployment

CPU_SHARE = 0.25
"""Cores a replica asks per engine thread unless its user says: CPU is shared between
replicas (an idle one uses none), so a node holds four replicas per core it offers by
default, and the load score steers new ones to the idler nodes."""

PROCESS_OVERHEAD = 160 << 20
"""A worker process's own memory besides the engine's (Python, the bus client)."""

TORCH_RUNTIME = 640 << 20
"""PyTorch and sentence-transformers loaded, before any weights (a prior, as the
rest: the replica's measured RSS corrects it)."""


REMOTE_CPU = 0.05
"""Cores a remote provider's replica asks: it waits on the network, parsing a stream."""

VLLM_HOST = 4 << 30
"""Host memory of a vLLM server (PyTorch, CUDA's runtime, its workers): a prior."""

REMOTE_CLIENT = 32 << 20
"""A remote provider's replica: an HTTP client and its connections, no weights."""


class Estimates:
    def __init__(self, registry: LocalRegistry, defaults: EngineSettings) -> None:
        self.registry = registry
        self.defaults = defaults
        self._memory: dict[tuple[str, str], int] = {}

    def need(self, deployment: Deployment) -> Resources:
        given = dict(deployment.resources or {})
        settings = self.defaults.overlay(deployment.engine_settings or {})
        cpu = float(given.get("cpu") or (REMOTE_CPU if deployment.engine == "remote"
                                         else settings.threads * CPU_SHARE))
        memory = int(given.get("memory") or self.memory(deployment, settings))
        gpus = int(given.get("gpus") or (1 if deployment.engine == "vllm" else 0))
        return Resources(cpu=cpu, memory=memory, gpus=gpus)

    def memory(self, deployment: Deployment, settings: EngineSettings) -> int:
        key = (deployment.served_ref, json.dumps(settings.model_dump(), sort_keys=True))
        known = self._memory.get(key)
        if known is None:
            version = self.registry.catalog.get(deployment.served_ref, project=deployment.project)
            stored = (version.estimate or {}).get("total_bytes")
            local = all(self.registry.blobs.path(b.digest).is_file() for b in version.blobs)
            if not local and stored:
                # The weights are in shared storage, not here: the estimate made at import
                # stands (the control plane does not pull gigabytes to read a header);
                # replicas' measured RSS corrects it for the next placements.
                known = self._memory[key] = int(stored) + PROCESS_OVERHEAD
                return known
            model_format = (version.config or {}).get("format")
            if model_format == "remote":  # no weights: a process and its HTTP client
                known = self._memory[key] = REMOTE_CLIENT + PROCESS_OVERHEAD
                return known
            if model_format == "transformers":  # weights on the GPU; vLLM's host side
                known = self._memory[key] = VLLM_HOST + PROCESS_OVERHEAD
                return known
            if model_format == "sentence-transformers":
                weights = sum(b.size for b in version.blobs
                              if b.filename.endswith((".safetensors", ".bin")))
                known = self._memory[key] = (TORCH_RUNTIME + 2 * weights
                                             + PROCESS_OVERHEAD)
                return known
            info, weights_bytes = self.registry.files.weights_info(version)
            estimate = estimate_resources(
                info, weights_bytes=weights_bytes, slots=settings.slots,
                ctx_size=settings.ctx_size, kv_unified=settings.kv_unified,
                cache_ram_mib=settings.cache_ram_mib, n_batch=settings.batch_size,
                n_ubatch=settings.batch_size)
            known = self._memory[key] = estimate.total_bytes + PROCESS_OVERHEAD
        return known
