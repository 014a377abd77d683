"""Pins: who uses a version. A pinned version cannot be deleted, so its blobs stay.

Deployments pin the version they serve (the controller writes the pin when it
resolves the deployment's reference). The pins live beside the manifests, in the
registry's own storage, so every server sharing that storage honours them,
whatever route a deletion takes: a tag removed first, the version named by
number, or gc (which only collects blobs no manifest names).

A running replica that no deployment stands for (``llmos worker --model X``)
pins its version with a lease: the pin names an expiry that the replica renews,
so one killed with ``kill -9`` does not hold the version for ever.

Layout: ``repos/<project>/<name>/_pins/<version>/<key>`` holding
``{"holder": ..., "since": ..., "expires_at": ...}`` (no expiry: until unpinned),
the key a hash of the holder (any text).
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

    def pin(self, version: ModelVersion, holder: str, *, lease_s: float | None = None,
            quiet: bool = False) -> None:
        """Pin ``version`` for ``holder``: until unpinned, or for ``lease_s`` seconds
        (pin again to renew; ``quiet`` for a renewal, which is not logged)."""
        now = time.time()
        record: dict[str, object] = {"holder": holder, "since": now}
        if lease_s is not None:
            record["expires_at"] = now + lease_s
        self.meta.put(_key(version, holder), json.dumps(record).encode())
        if not quiet:
            log.info("registry: pinned %s/%s for %s%s", version.project, version.ref, holder,
                     f" (a lease of {lease_s:g}s, renewed while it runs)" if lease_s else "",
                     extra={"event": "registry.pin"})

    def unpin(self, version: ModelVersion, holder: str) -> None:
        self.meta.delete(_key(version, holder))
        log.info("registry: unpinned %s/%s for %s", version.project, version.ref, holder,
                 extra={"event": "registry.unpin"})

    def holders(self, version: ModelVersion) -> list[str]:
        """Who pins ``version`` now (an expired lease does not count)."""
        holders = []
        now = time.time()
        for info in self.meta.list(_prefix(version)):
            raw = self.meta.get(info.path)
            try:
                record = json.loads(raw or b"{}")
            except ValueError:
                record = None
            if not isinstance(record, dict):
                holders.append(info.path)  # unreadable: count it, to be safe
                continue
            expires_at = record.get("expires_at")
            if isinstance(expires_at, (int, float)) and expires_at < now:
                continue
            holder = record.get("holder")
            holders.append(holder if isinstance(holder, str) else info.path)
        return sorted(holders)
