"""Pins: who uses a version. A pinned version cannot be deleted, so its blobs stay.

Deployments pin the version they serve (the controller writes the pin when it
resolves the deployment's reference). The pins live beside the manifests, in the
registry's own storage, so every server sharing that storage honours them,
whatever route a deletion takes: a tag removed first, the version named by
number, or gc (which only collects blobs no manifest names).

Layout: ``repos/<project>/<name>/_pins/<version>/<key>`` holding
``{"holder": ..., "since": ...}``, the key a hash of the holder (any text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from llmos.registry.manifest import ModelVersion
from llmos.storage import ObjectStorage

log = logging.getLogger(__name__)


def _prefix(version: ModelVersion) -> str:
    return f"repos/{version.project}/{version.name}/_pins/{version.version}"


def _key(version: ModelVersion, holder: str) -> str:
    return f"{_prefix(version)}/{hashlib.sha256(holder.encode()).hexdigest()[:32]}"


class Pins:
    def __init__(self, meta: ObjectStorage) -> None:
        self.meta = meta

    def pin(self, version: ModelVersion, holder: str) -> None:
        self.meta.put(_key(version, holder),
                      json.dumps({"holder": holder, "since": time.time()}).encode())
        log.info("registry: pinned %s/%s for %s", version.project, version.ref, holder,
                 extra={"event": "registry.pin"})

    def unpin(self, version: ModelVersion, holder: str) -> None:
        self.meta.delete(_key(version, holder))
        log.info("registry: unpinned %s/%s for %s", version.project, version.ref, holder,
                 extra={"event": "registry.unpin"})

    def holders(self, version: ModelVersion) -> list[str]:
        holders = []
        for info in self.meta.list(_prefix(version)):
            raw = self.meta.get(info.path)
            try:
                holder = json.loads(raw or b"{}").get("holder")
            except (ValueError, AttributeError):
                holder = None
            holders.append(holder if isinstance(holder, str) else info.path)
        return sorted(holders)
