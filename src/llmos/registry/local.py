"""The registry: what writes it, on local disk or beside a shared storage.

It is made of four parts, one concept each:

- ``catalog`` (``catalog.py``): manifests, tags and tombstones, as objects in the
  registry's storage (by default its own directory);
- ``blobs`` (``blobs.py``): content-addressed files under ``blobs/``, written once;
- ``files`` (``files.py``): those blobs as local files for engines (pulled from a remote
  storage when need be), and each version's files under their original names;
- ``locks`` (``locks.py``): ``flock`` files between processes on this node.

``LocalRegistry`` holds them and does what spans them: importing and creating versions,
tagging, deleting. Readers use its parts: ``registry.catalog.get(ref)``,
``registry.files.weights_path(version)``; uploads use ``uploads``, deployments ``pins``.

A blob is written to ``*.part`` and renamed into place only once its digest is
known (and, for GGUF, its header checks), so a half-written or refused blob is
never visible. Writers hold a shared lock on ``locks/store`` from their first
blob to their manifest; ``gc`` holds it exclusively, so it never takes a blob a
version is about to name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import providers
from llmos.errors import BadRequest, Conflict, NotFound
from llmos.registry.blobs import BlobStore, Progress, Stored
from llmos.registry.catalog import Catalog
from llmos.registry.files import LocalFiles, combined
from llmos.registry.gguf import GGUFInfo, read_gguf
from llmos.registry.locks import StoreLocks
from llmos.registry.manifest import (
    ADAPTER_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    RELATIONS,
    Blob,
    ModelVersion,
)
from llmos.registry.metadata import (
    check_filename,
    check_splits,
    describe,
    is_gguf_name,
    media_type,
)
from llmos.registry.pins import Pins
from llmos.registry.refs import (
    DEFAULT_PROJECT,
    check_name,
    check_project,
    check_tag,
    parse_ref,
)
from llmos.registry.sources import model_files
from llmos.registry.uploads import Uploads
from llmos.storage import ObjectStorage, open_storage
from llmos.storage import blobs as remote_blobs

log = logging.getLogger(__name__)

Estimator = Callable[[GGUFInfo, int], dict[str, Any]]
"""(the weights' header, their bytes) -> the resource estimate stored with a new version."""


@dataclass(frozen=True)
class NewFile:
    """A file of a version being created: its stored blob, name and parsed header."""

    stored: Stored
    filename: str
    info: GGUFInfo | None


@dataclass(frozen=True)
class Imported:
    version: ModelVersion
    created: bool
    """False when an identical version existed (it was tagged, nothing was added)."""
    new_bytes: int
    """Bytes of blob content the store did not have before."""


class LocalRegistry:
    """A registry whose manifests and tags are objects in ``storage`` (by default the
    local directory ``root``) and whose blobs are files under ``root``: the store itself,
    or, when ``storage`` is remote, this node's verified cache of the blobs there."""

    def __init__(self, root: Path, *, estimator: Estimator | None = None,
                 storage: ObjectStorage | None = None) -> None:
        self.root = root
        self.estimator = estimator
        self.remote = storage
        if storage is None:
            root.mkdir(parents=True, exist_ok=True)
        meta = storage if storage is not None else open_storage(f"file://{root.resolve()}")
        self.catalog = Catalog(meta)
        self.blobs = BlobStore(root / "blobs")
        self.locks = StoreLocks(root)
        self.files = LocalFiles(root, self.blobs, self.locks, storage)
        self.uploads = Uploads(root, self.blobs)
        self.pins = Pins(meta)

    def import_path(self, path: Path, name: str, *, tag: str | None = None,
                    project: str = DEFAULT_PROJECT, label: str | None = None,
                    derived_from: str | None = None, relation: str | None = None,
                    creator: str | None = None, move: bool = False,
                    include: list[str] | None = None,
                    progress: Progress | None = None) -> Imported:
        """Store a file (with the other parts of a split GGUF) or a folder's files as a
        new version of ``name``; an identical existing version is tagged instead."""
        _check_new(name, tag, project, relation)
        found = model_files(path, include)
        sources = found.files
        label = label if label is not None else found.origin
        # Every header is read before anything is written: a bad file changes nothing.
        infos = {p: read_gguf(p) if is_gguf_name(p.name) else None for p in sources}
        with self.locks.writing():
            files = [NewFile(self.blobs.put_file(p, move=move, progress=progress),
                             found.name_of(i), infos[p]) for i, p in enumerate(sources)]
            return self._create(name, files, tag=tag, project=project, label=label,
                                derived_from=derived_from, relation=relation,
                                creator=creator)

    def put_blob(self, chunks: Iterator[bytes], *, filename: str | None = None,
                 expected: str | None = None, progress: Progress | None = None) -> Stored:
        """Store uploaded content; a ``*.gguf`` filename has its header checked first."""
        check = None
        if filename is not None and is_gguf_name(check_filename(filename)):
            def check(part: Path) -> None:
                read_gguf(part)
        with self.locks.writing():
            return self.blobs.put_stream(chunks, expected=expected, check=check,
                                         progress=progress)

    def finish_upload(self, upload_id: str) -> Stored:
        with self.locks.writing():
            return self.uploads.finish(upload_id)

    def create_version(self, name: str, files: list[tuple[str, str]], *,
                       tag: str | None = None, project: str = DEFAULT_PROJECT,
                       label: str | None = None, derived_from: str | None = None,
                       relation: str | None = None, creator: str | None = None) -> Imported:
        """A version of blobs already stored, given as (filename, digest) pairs."""
        _check_new(name, tag, project, relation)
        if not files:
            raise BadRequest("a version needs at least one file", param="files")
        with self.locks.writing():
            new: list[NewFile] = []
            for filename, digest in files:
                check_filename(filename)
                try:
                    path = self.files.blob_path(digest)
                except NotFound:
                    raise BadRequest(f"blob {digest} of {filename} is not in the store; "
                                     "upload it first", param="files") from None
                info = read_gguf(path) if is_gguf_name(filename) else None
                new.append(NewFile(Stored(digest, path.stat().st_size, new=False),
                                   filename, info))
            return self._create(name, new, tag=tag, project=project, label=label,
                                derived_from=derived_from, relation=relation,
                                creator=creator)

    def _create(self, name: str, files: list[NewFile], *, tag: str | None, project: str,
                label: str | None, derived_from: str | None, relation: str | None,
                creator: str | None) -> Imported:
        names = [f.filename for f in files]
        if len(set(names)) != len(names):
            raise BadRequest("two files of a version have the same name", param="files")
        check_splits(names)
        if providers.is_remote(names):  # a bad spec is refused now, not at a replica's start
            providers.parse(self.blobs.path(files[0].stored.digest).read_bytes())
        catalog = self.catalog
        parent = None
        if derived_from:
            try:
                parent = catalog.get(derived_from, project=project)
            except NotFound:
                raise BadRequest(f"derived_from {derived_from!r}: no such version in project "
                                 f"{project!r}", param="derived_from") from None
        blobs = tuple(Blob(digest=f.stored.digest, size=f.stored.size,
                           media_type=media_type(f.filename, f.info), filename=f.filename)
                      for f in sorted(files, key=lambda f: f.filename))
        new_bytes = sum(f.stored.size for f in files if f.stored.new)
        weights = [f for f in sorted(files, key=lambda f: f.filename)
                   if f.info is not None and media_type(f.filename, f.info) == GGUF_MEDIA_TYPE]
        adapters = [f for f in files if media_type(f.filename, f.info) == ADAPTER_MEDIA_TYPE]
        main = weights or adapters
        metadata = describe([f.info for f in main if f.info is not None])
        if parent is not None and relation is None:
            relation = _relation(metadata, parent, bool(adapters) and not weights)
        with self.locks.repository(project, name):
            for existing in catalog.versions(name, project=project):
                if existing.blobs == blobs:
                    if tag is not None:  # a plain re-import moves nothing
                        catalog.set_tag(project, name, tag, existing.version)
                    log.info("registry: %s/%s already holds these files%s", project,
                             existing.ref, f"; tagged {tag}" if tag else "",
                             extra={"event": "registry.import"})
                    return Imported(catalog.get(existing.ref, project=project), False,
                                    new_bytes)
            estimate = None
            if self.estimator is not None and weights:
                estimate = self.estimator(combined([f.info for f in weights if f.info]),
                                          sum(f.stored.size for f in weights))
            if self.remote is not None:  # the blobs first: a manifest never names a missing one
                for f in files:
                    remote_blobs.push(self.remote, self.blobs.path(f.stored.digest),
                                      f.stored.digest)
            number = catalog.next_number(project, name)
            while True:  # create-only: two writers (two nodes) never take the same number
                version = ModelVersion(
                    name=name, version=number, project=project,
                    created_at=time.time(), blobs=blobs, label=label,
                    derived_from=parent.ref if parent else None, relation=relation,
                    creator=creator, metadata=metadata,
                    config=_format(main, [f.filename for f in files]), estimate=estimate)
                if catalog.add(version):
                    break
                number += 1
            if tag is not None:
                catalog.set_tag(project, name, tag, version.version)
            if tag != "latest" and (tag is None or "latest" not in catalog.tags(
                    name, project=project)):
                catalog.set_tag(project, name, "latest", version.version)
            created = catalog.get(version.ref, project=project)
            log.info("registry: created %s/%s (%d files, %d bytes, %d new; tags %s)", project,
                     created.ref, len(blobs), created.size, new_bytes,
                     ", ".join(created.tags) or "none", extra={"event": "registry.import"})
            return Imported(created, True, new_bytes)

    def tag(self, ref: str, tag: str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """Point ``tag`` at the version ``ref`` names (moving it if it pointed elsewhere)."""
        check_tag(tag)
        version = self.catalog.get(ref, project=project)
        with self.locks.repository(project, version.name):
            self.catalog.set_tag(project, version.name, tag, version.version)
        log.info("registry: tagged %s/%s as %s", project, version.ref, tag,
                 extra={"event": "registry.tag"})
        return self.catalog.get(version.ref, project=project)

    def untag(self, ref: str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """Remove the tag of ``name:tag``; the version stays."""
        parsed = parse_ref(ref)
        if parsed.tag is None:
            raise BadRequest(f"untag takes name:tag, not {ref!r}", param="ref")
        version = self.catalog.get(parsed, project=project)
        with self.locks.repository(project, parsed.name):
            self.catalog.drop_tag(project, parsed.name, parsed.tag)
        log.info("registry: removed tag %s from %s/%s", parsed.tag, project, version.ref,
                 extra={"event": "registry.untag"})
        return self.catalog.get(version.ref, project=project)

    def delete(self, ref: str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """Delete one version, its tags and its files folder; its blobs wait for gc.
        A pinned version (one a deployment uses) is refused, by whatever name it is given."""
        version = self.catalog.get(ref, project=project)
        with self.locks.repository(project, version.name):
            holders = self.pins.holders(version)
            if holders:
                log.warning("registry: refused to delete %s/%s: pinned by %s", project,
                            version.ref, ", ".join(holders), extra={"event": "registry.delete"})
                raise Conflict(f"{version.ref} is in use by {', '.join(holders)}; point the "
                               "deployment at another version or delete it first")
            self.catalog.remove(version)
            self.files.remove(version)
        log.info("registry: deleted %s/%s (tags %s; %d blobs left for gc)", project,
                 version.ref, ", ".join(version.tags) or "none", len(version.blobs),
                 extra={"event": "registry.delete"})
        return version


def _check_new(name: str, tag: str | None, project: str, relation: str | None) -> None:
    check_name(name)
    check_project(project)
    if tag is not None:
        check_tag(tag)
    if relation is not None and relation not in RELATIONS:
        raise BadRequest(f"invalid relation {relation!r}: one of {', '.join(RELATIONS)}",
                         param="relation")


def _relation(metadata: dict[str, Any], parent: ModelVersion, adapter_only: bool) -> str:
    """A guess at how a version relates to its parent, when the user did not say."""
    if adapter_only:
        return "adapter"
    theirs = parent.metadata
    if (metadata.get("architecture") == theirs.get("architecture")
            and metadata.get("parameter_count") == theirs.get("parameter_count")
            and metadata.get("quantization") != theirs.get("quantization")):
        return "quantization"
    return "derived"


SENTENCE_TRANSFORMERS = "sentence-transformers"


def _format(gguf: object, filenames: list[str]) -> dict[str, str]:
    """What a version's files are, for the engine that loads them: GGUF weights, a
    sentence-transformers folder (its ``modules.json`` and config beside the weights),
    a Hugging Face transformers folder (``config.json`` and safetensors), or a remote
    provider's model (one ``remote.json``)."""
    if gguf:
        return {"format": "gguf"}
    if providers.is_remote(filenames):
        return {"format": providers.FORMAT}
    names = set(filenames)
    if "modules.json" in names and names & {"config_sentence_transformers.json",
                                            "sentence_bert_config.json"}:
        return {"format": SENTENCE_TRANSFORMERS}
    if "config.json" in names and any(n.endswith(".safetensors") for n in names):
        return {"format": "transformers"}  # a Hugging Face folder: vLLM, where it runs
    return {}
