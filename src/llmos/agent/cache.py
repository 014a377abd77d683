"""A node's model cache: the versions its replicas load, pulled from the control plane.

An order names a version as the control plane's registry knows it (``name@N``). The
agent asks that registry's API for the version's files (name and digest each), finds
a version with exactly those files in the node's own registry, or pulls the blobs it
lacks (each checked against its digest as it is written) and makes that version
here. A version the node holds is never pulled again, whatever number it has here;
the worker is given the node's own reference to it.

The default model is imported from the node's own PyPI packages first (no download),
and found by its digest like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from llmos.errors import LLMOSError, NotFound, RegistryError
from llmos.registry.defaults import DEFAULT_MODEL_NAME, ensure_default_model
from llmos.registry.local import LocalRegistry

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


class NodeCache:
    def __init__(self, registry: LocalRegistry, control: str | None,
                 api_key: str | None = None) -> None:
        self.registry = registry
        self.control = control.rstrip("/") if control else None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.resolved: dict[str, str] = {}
        """The control plane's reference -> the node's, for versions held here."""

    def resolve(self, ref: str, project: str = "default") -> str:
        """The node's own reference to the version ``ref`` names on the control plane,
        pulled here first if the node does not hold it (blocking)."""
        if self.control is None:
            return ref  # the worker finds it (shared storage, or the default model)
        remote = self._manifest(ref, project)
        name = remote["name"]
        files = {(b["filename"], b["digest"]) for b in remote["blobs"]}
        held = self._held(name, files, project)
        if held is None and name == DEFAULT_MODEL_NAME:
            ensure_default_model(self.registry, project=project)
            held = self._held(name, files, project)
        if held is not None:
            self.resolved[remote["ref"]] = held
            return held
        pulled = 0
        for blob in remote["blobs"]:
            digest = blob["digest"]
            if self.registry.files.blob_size(digest) is None:
                log.info("pulling %s (%s, %d MiB) from %s", blob["filename"], digest[:19],
                         blob["size"] >> 20, self.control)
                self.registry.put_blob(self._download(digest), filename=blob["filename"],
                                       expected=digest)
                pulled += blob["size"]
        made = self.registry.create_version(
            name, sorted(files), project=project,
            label=f"pulled from {self.control} ({remote['ref']})")
        log.info("version %s is here as %s (%d MiB pulled)", remote["ref"], made.version.ref,
                 pulled >> 20)
        self.resolved[remote["ref"]] = made.version.ref
        return made.version.ref

    def _held(self, name: str, files: set[tuple[str, str]], project: str) -> str | None:
        try:
            versions = self.registry.catalog.versions(name, project=project)
        except (NotFound, LLMOSError):
            return None
        for version in versions:
            if {(b.filename, b.digest) for b in version.blobs} == files:
                return version.ref
        return None

    def _manifest(self, ref: str, project: str) -> dict[str, Any]:
        try:
            response = httpx.get(f"{self.control}/api/models/{quote(ref, safe='/:@')}",
                                 params={"project": project}, headers=self._headers,
                                 timeout=30)
        except httpx.HTTPError as exc:
            raise RegistryError(f"the control plane at {self.control} does not answer: "
                                f"{exc}") from exc
        if response.status_code != 200:
            raise RegistryError(f"the control plane has no version {ref}: "
                                f"{response.status_code} {response.text[:200]}")
        body: dict[str, Any] = response.json()
        return body

    def _download(self, digest: str) -> Iterator[bytes]:
        with httpx.stream("GET", f"{self.control}/api/blobs/{digest}",
                          headers=self._headers, timeout=60) as r:
            if r.status_code != 200:
                raise RegistryError(f"could not pull blob {digest}: {r.status_code}")
            yield from r.iter_bytes(_CHUNK)
