"""Registry upkeep: verify blobs against their digests, and collect what no version
names. Both work on a ``LocalRegistry`` from outside; neither is on a request's path."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass

from llmos.registry.blobs import Progress
from llmos.registry.local import LocalRegistry
from llmos.registry.manifest import ModelVersion
from llmos.registry.refs import DEFAULT_PROJECT
from llmos.storage import blobs as remote_blobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcReport:
    blobs: int
    bytes: int
    parts: int
    folders: int


@dataclass(frozen=True)
class Problem:
    ref: str | None
    digest: str
    problem: str


def _selected(registry: LocalRegistry, ref: str | None, project: str,
              everywhere: bool) -> list[ModelVersion]:
    if ref is not None:
        return [registry.catalog.get(ref, project=project)]
    return registry.catalog.all_versions() if everywhere else registry.catalog.list(project=project)


def referenced(registry: LocalRegistry) -> dict[str, list[str]]:
    """Every digest a manifest names, with the versions naming it."""
    refs: dict[str, list[str]] = {}
    for version in registry.catalog.all_versions():
        for blob in version.blobs:
            refs.setdefault(blob.digest, []).append(f"{version.project}/{version.ref}")
    return refs


def verify(registry: LocalRegistry, ref: str | None = None, *,
           project: str = DEFAULT_PROJECT, everywhere: bool = True,
           progress: Progress | None = None) -> list[Problem]:
    """Re-hash the blobs of one version (or of every version: in every project, or in
    ``project`` only when not ``everywhere``); list what is wrong."""
    problems: list[Problem] = []
    checked: dict[str, str | None] = {}
    for version in _selected(registry, ref, project, everywhere):
        for blob in version.blobs:
            if blob.digest not in checked:
                checked[blob.digest] = _verify_blob(registry, blob.digest, progress)
            problem = checked[blob.digest]
            if problem is not None:
                problems.append(Problem(f"{version.project}/{version.ref}", blob.digest,
                                        f"{blob.filename}: {problem}"))
    return problems


def _verify_blob(registry: LocalRegistry, digest: str, progress: Progress | None
                 ) -> str | None:
    blobs, remote = registry.blobs, registry.remote
    if remote is None:
        return blobs.verify(digest, progress)
    if not remote_blobs.exists(remote, digest):
        return f"missing from {remote.url}"
    if not blobs.exists(digest):
        return None  # not cached here; a pull checks every part and the whole
    problem = blobs.verify(digest, progress)
    if problem is not None:  # a bad cached copy: drop it, the next use pulls again
        blobs.path(digest).unlink(missing_ok=True)
        return f"the cached copy on this node was {problem}; it was removed"
    return None


def verify_bytes(registry: LocalRegistry, ref: str | None = None, *,
                 project: str = DEFAULT_PROJECT, everywhere: bool = True) -> int:
    """How many bytes ``verify`` reads (for a progress bar)."""
    versions = _selected(registry, ref, project, everywhere)
    return sum({b.digest: b.size for v in versions for b in v.blobs}.values())


def gc(registry: LocalRegistry, *, grace_s: float = 3600.0) -> GcReport:
    """Remove blobs no version names (unless younger than ``grace_s``: an upload may be
    about to name them), stale ``*.part`` files and files folders of gone versions."""
    blobs = freed = parts = folders = 0
    with registry.locks.collecting():
        versions = registry.catalog.all_versions()  # read once: on object storage, a full listing
        referenced = {b.digest for v in versions for b in v.blobs}
        now = time.time()
        for digest in registry.blobs.digests():
            path = registry.blobs.path(digest)
            if digest not in referenced and now - path.stat().st_mtime >= grace_s:
                freed += path.stat().st_size
                path.unlink()
                blobs += 1
        remote = registry.remote
        if remote is not None:
            for digest in remote_blobs.digests(remote):
                info = remote.head(f"{remote_blobs.blob_prefix(digest)}/index.json")
                if digest in referenced or info is None or now - info.modified < grace_s:
                    continue
                record = remote_blobs.index(remote, digest) or {}
                remote_blobs.delete(remote, digest)
                blobs += 1
                freed += int(str(record.get("size", 0)))
            removed, _ = remote_blobs.collect_parts(remote, grace_s=grace_s)
            parts += removed
        sessions, _ = registry.uploads.collect(grace_s)
        parts += sessions
        # No writer holds the lock: every partial blob (an import's *.part, a cut pull's
        # *.partial) is stale.
        folder = registry.blobs.folder
        stale = [*folder.glob(".*.part"), *folder.glob("*.partial")] if folder.is_dir() else []
        for part in stale:
            with contextlib.suppress(OSError):
                part.unlink()
                parts += 1
        live = {registry.files.folder(v) for v in versions}
        files = registry.root / "files"
        for versioned in sorted(files.glob("**/_versions/*")) if files.is_dir() else []:
            if versioned.is_dir() and versioned not in live:
                shutil.rmtree(versioned, ignore_errors=True)
                folders += 1
        staging = registry.root / "staging"
        for stage in staging.iterdir() if staging.is_dir() else []:
            if now - stage.stat().st_mtime >= grace_s:
                shutil.rmtree(stage, ignore_errors=True)
    log.info("registry: gc removed %d blobs (%d bytes), %d partial files, %d folders "
             "(grace %gs)", blobs, freed, parts, folders, grace_s,
             extra={"event": "registry.gc"})
    return GcReport(blobs=blobs, bytes=freed, parts=parts, folders=folders)
