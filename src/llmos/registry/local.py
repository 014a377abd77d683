"""The registry on local disk.

Layout under its root::

    blobs/sha256/<hex>                                content-addressed, written once
    repos/<project>/<name>/_versions/<version>.json   manifests, immutable
    repos/<project>/<name>/_tags/<tag>                the version number a tag names
    files/<project>/<name>/_versions/<version>/<file> hard links, original names
    locks/                                            flock files

(Names start with a letter or digit, so ``_versions`` and ``_tags`` never clash with
the repositories of a namespace: ``acme`` and ``acme/tiny`` can both exist.)

A blob is written to ``*.part`` and renamed into place only once its digest is
known (and, for GGUF, its header checks), so a half-written or refused blob is
never visible. Writers hold a shared lock on ``locks/store`` from their first
blob to their manifest; ``gc`` holds it exclusively, so it never takes a blob a
version is about to name.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos import providers
from llmos.errors import BadRequest, Conflict, NotFound, RegistryError, excerpt
from llmos.registry.blobs import BlobStore, Progress, Stored, storage_error
from llmos.registry.gguf import GGUFInfo, read_gguf
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
from llmos.registry.refs import ModelRef, check_name, check_tag, parse_ref
from llmos.registry.sources import model_files
from llmos.registry.uploads import Uploads
from llmos.storage import ObjectExists, ObjectStorage, open_storage
from llmos.storage import blobs as remote_blobs

log = logging.getLogger(__name__)

Estimator = Callable[[GGUFInfo, int], dict[str, Any]]
"""(the weights' header, their bytes) -> the resource estimate stored with a new version."""

DEFAULT_PROJECT = "default"
_PROJECT_RULE = ("a project name is at most 64 lowercase ASCII letters, digits, '-' and '_', "
                 "starting with a letter or digit")


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


PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_PROJECT_RE = re.compile(PROJECT_PATTERN)


def check_project(project: str) -> str:
    if not _PROJECT_RE.fullmatch(project):  # ASCII only: 'é'.islower() is True
        raise BadRequest(f"invalid project {excerpt(project)}: {_PROJECT_RULE}",
                         param="project")
    return project


def check_gguf(path: Path) -> GGUFInfo:
    return read_gguf(path)


class LocalRegistry:
    """A registry whose manifests and tags are objects in ``storage`` (by default the
    local directory ``root``) and whose blobs are files under ``root``: the store itself,
    or, when ``storage`` is remote, this node's verified cache of the blobs there."""

    def __init__(self, root: Path, *, estimator: Estimator | None = None,
                 storage: ObjectStorage | None = None) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs")
        self.estimator = estimator
        self.remote = storage
        if storage is None:
            root.mkdir(parents=True, exist_ok=True)
        self.meta = storage if storage is not None else open_storage(f"file://{root.resolve()}")
        self.uploads = Uploads(root, self.blobs)
        self.pins = Pins(self.meta)

    # locks -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, name: str, mode: int) -> Iterator[None]:
        path = self.root / "locks" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
        except OSError as exc:
            raise storage_error(exc, self.root) from exc
        with handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Held from a writer's first blob to its manifest: gc waits for it."""
        return self._lock("store", fcntl.LOCK_SH)

    def _repository_lock(self, project: str, name: str) -> contextlib.AbstractContextManager[None]:
        return self._lock(f"repo-{project}-{name.replace('/', '--')}", fcntl.LOCK_EX)

    # writing -----------------------------------------------------------------------

    def import_path(self, path: Path, name: str, *, tag: str | None = None,
                    project: str = DEFAULT_PROJECT, label: str | None = None,
                    derived_from: str | None = None, relation: str | None = None,
                    creator: str | None = None, move: bool = False,
                    include: list[str] | None = None,
                    progress: Progress | None = None) -> Imported:
        """Store a file (with the other parts of a split GGUF) or a folder's files as a
        new version of ``name``; an identical existing version is tagged instead."""
        self._check_new(name, tag, project, relation)
        found = model_files(path, include)
        sources = found.files
        label = label if label is not None else found.origin
        # Every header is read before anything is written: a bad file changes nothing.
        infos = {p: check_gguf(p) if is_gguf_name(p.name) else None for p in sources}
        with self.writing():
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
                check_gguf(part)
        with self.writing():
            return self.blobs.put_stream(chunks, expected=expected, check=check,
                                         progress=progress)

    def finish_upload(self, upload_id: str) -> Stored:
        with self.writing():
            return self.uploads.finish(upload_id)

    def create_version(self, name: str, files: list[tuple[str, str]], *,
                       tag: str | None = None, project: str = DEFAULT_PROJECT,
                       label: str | None = None, derived_from: str | None = None,
                       relation: str | None = None, creator: str | None = None) -> Imported:
        """A version of blobs already stored, given as (filename, digest) pairs."""
        self._check_new(name, tag, project, relation)
        if not files:
            raise BadRequest("a version needs at least one file", param="files")
        with self.writing():
            new: list[NewFile] = []
            for filename, digest in files:
                check_filename(filename)
                try:
                    path = self._local_blob(digest)
                except NotFound:
                    raise BadRequest(f"blob {digest} of {filename} is not in the store; "
                                     "upload it first", param="files") from None
                info = check_gguf(path) if is_gguf_name(filename) else None
                new.append(NewFile(Stored(digest, path.stat().st_size, new=False),
                                   filename, info))
            return self._create(name, new, tag=tag, project=project, label=label,
                                derived_from=derived_from, relation=relation,
                                creator=creator)

    def _check_new(self, name: str, tag: str | None, project: str,
                   relation: str | None) -> None:
        check_name(name)
        check_project(project)
        if tag is not None:
            check_tag(tag)
        if relation is not None and relation not in RELATIONS:
            raise BadRequest(f"invalid relation {relation!r}: one of {', '.join(RELATIONS)}",
                             param="relation")

    def _create(self, name: str, files: list[NewFile], *, tag: str | None, project: str,
                label: str | None, derived_from: str | None, relation: str | None,
                creator: str | None) -> Imported:
        names = [f.filename for f in files]
        if len(set(names)) != len(names):
            raise BadRequest("two files of a version have the same name", param="files")
        check_splits(names)
        if providers.is_remote(names):  # a bad spec is refused now, not at a replica's start
            providers.parse(self.blobs.path(files[0].stored.digest).read_bytes())
        parent = None
        if derived_from:
            try:
                parent = self.get(derived_from, project=project)
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
        with self._repository_lock(project, name):
            for existing in self.versions(name, project=project):
                if existing.blobs == blobs:
                    if tag is not None:  # a plain re-import moves nothing
                        self._set_tag(project, name, tag, existing.version)
                    log.info("registry: %s/%s already holds these files%s", project,
                             existing.ref, f"; tagged {tag}" if tag else "",
                             extra={"event": "registry.import"})
                    return Imported(self.get(existing.ref, project=project), False, new_bytes)
            estimate = None
            if self.estimator is not None and weights:
                estimate = self.estimator(_combined([f.info for f in weights if f.info]),
                                          sum(f.stored.size for f in weights))
            if self.remote is not None:  # the blobs first: a manifest never names a missing one
                for f in files:
                    remote_blobs.push(self.remote, self.blobs.path(f.stored.digest),
                                      f.stored.digest)
            number = max([*self._numbers(project, name), *self._deleted(project, name)],
                         default=0) + 1
            while True:  # create-only: two writers (two nodes) never take the same number
                version = ModelVersion(
                    name=name, version=number, project=project,
                    created_at=time.time(), blobs=blobs, label=label,
                    derived_from=parent.ref if parent else None, relation=relation,
                    creator=creator, metadata=metadata,
                    config=_format(main, [f.filename for f in files]), estimate=estimate)
                try:
                    self._write_manifest(version)
                    break
                except ObjectExists:
                    number += 1
            if tag is not None:
                self._set_tag(project, name, tag, version.version)
            if tag != "latest" and (tag is None or "latest" not in self.tags(
                    name, project=project)):
                self._set_tag(project, name, "latest", version.version)
            created = self.get(version.ref, project=project)
            log.info("registry: created %s/%s (%d files, %d bytes, %d new; tags %s)", project,
                     created.ref, len(blobs), created.size, new_bytes,
                     ", ".join(created.tags) or "none", extra={"event": "registry.import"})
            return Imported(created, True, new_bytes)

    def _write_manifest(self, version: ModelVersion) -> None:
        key = self._manifest_key(version.project, version.name, version.version)
        self.meta.put(key, json.dumps(version.to_dict(with_tags=False), indent=2).encode(),
                      create=True)

    def _set_tag(self, project: str, name: str, tag: str, version: int) -> None:
        self.meta.put(self._tag_key(project, name, tag), str(version).encode())

    def tag(self, ref: str, tag: str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """Point ``tag`` at the version ``ref`` names (moving it if it pointed elsewhere)."""
        check_tag(tag)
        version = self.get(ref, project=project)
        with self._repository_lock(project, version.name):
            self._set_tag(project, version.name, tag, version.version)
        log.info("registry: tagged %s/%s as %s", project, version.ref, tag,
                 extra={"event": "registry.tag"})
        return self.get(version.ref, project=project)

    def untag(self, ref: str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """Remove the tag of ``name:tag``; the version stays."""
        parsed = parse_ref(ref)
        if parsed.tag is None:
            raise BadRequest(f"untag takes name:tag, not {ref!r}", param="ref")
        version = self.get(parsed, project=project)
        with self._repository_lock(project, parsed.name):
            self.meta.delete(self._tag_key(project, parsed.name, parsed.tag))
        log.info("registry: removed tag %s from %s/%s", parsed.tag, project, version.ref,
                 extra={"event": "registry.untag"})
        return self.get(version.ref, project=project)

    def delete(self, ref: str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """Delete one version, its tags and its files folder; its blobs wait for gc.
        A pinned version (one a deployment uses) is refused, by whatever name it is given."""
        version = self.get(ref, project=project)
        with self._repository_lock(project, version.name):
            holders = self.pins.holders(version)
            if holders:
                log.warning("registry: refused to delete %s/%s: pinned by %s", project,
                            version.ref, ", ".join(holders), extra={"event": "registry.delete"})
                raise Conflict(f"{version.ref} is in use by {', '.join(holders)}; point the "
                               "deployment at another version or delete it first")
            for tag in version.tags:
                self.meta.delete(self._tag_key(project, version.name, tag))
            # A tombstone first: the number is never given to another version (whose
            # files a cache or a derived_from elsewhere could take for this one's).
            self.meta.put(f"repos/{project}/{version.name}/_deleted/{version.version}",
                          json.dumps({"deleted_at": time.time()}).encode())
            self.meta.delete(self._manifest_key(project, version.name, version.version))
            shutil.rmtree(self.files_path(version), ignore_errors=True)
        log.info("registry: deleted %s/%s (tags %s; %d blobs left for gc)", project,
                 version.ref, ", ".join(version.tags) or "none", len(version.blobs),
                 extra={"event": "registry.delete"})
        return version

    # reading -----------------------------------------------------------------------

    def _numbers(self, project: str, name: str) -> list[int]:
        prefix = f"repos/{project}/{name}/_versions/"
        numbers = []
        for info in self.meta.list(prefix.rstrip("/")):
            rest = info.path.removeprefix(prefix)
            if rest.endswith(".json") and rest[:-5].isdigit():
                numbers.append(int(rest[:-5]))
        return sorted(numbers)

    def _deleted(self, project: str, name: str) -> list[int]:
        prefix = f"repos/{project}/{name}/_deleted/"
        return [int(i.path.removeprefix(prefix)) for i in self.meta.list(prefix.rstrip("/"))
                if i.path.removeprefix(prefix).isdigit()]

    def versions(self, name: str, *, project: str = DEFAULT_PROJECT) -> list[ModelVersion]:
        check_name(name)
        return [self._read(project, name, n) for n in self._numbers(project, name)]

    def tags(self, name: str, *, project: str = DEFAULT_PROJECT) -> dict[str, int]:
        """Each tag of a repository and the version number it names."""
        prefix = f"repos/{project}/{name}/_tags/"
        tags: dict[str, int] = {}
        for info in self.meta.list(prefix.rstrip("/")):
            tag = info.path.removeprefix(prefix)
            raw = self.meta.get(info.path) if "/" not in tag else None
            with contextlib.suppress(ValueError):
                if raw is not None and not tag.startswith("."):
                    tags[tag] = int(raw)
        return tags

    def projects(self) -> list[str]:
        return sorted({i.path.split("/")[1] for i in self.meta.list("repos")
                       if i.path.count("/") >= 4})

    def list(self, *, project: str = DEFAULT_PROJECT) -> list[ModelVersion]:
        prefix = f"repos/{check_project(project)}/"
        names = sorted({i.path.removeprefix(prefix).rsplit("/_versions/", 1)[0]
                        for i in self.meta.list(prefix.rstrip("/"))
                        if "/_versions/" in i.path and i.path.endswith(".json")})
        return [v for n in names for v in self.versions(n, project=project)]

    def get(self, ref: ModelRef | str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        check_project(project)
        if ref.version is not None:
            number = ref.version
        elif ref.digest is not None:
            match = [v for v in self.versions(ref.name, project=project)
                     if any(b.digest == ref.digest for b in v.blobs)]
            if not match:
                raise NotFound(f"model {ref} not found")
            return match[-1]
        else:
            raw = self.meta.get(self._tag_key(project, ref.name, ref.tag or "latest"))
            if raw is None:
                known = self._numbers(project, ref.name)
                hint = (f"; it has versions {', '.join(map(str, known))}" if known
                        else "; import it with `llmos models import`")
                raise NotFound(f"model {ref} not found{hint}")
            number = int(raw)
        return self._read(project, ref.name, number)

    def _read(self, project: str, name: str, number: int) -> ModelVersion:
        raw = self.meta.get(self._manifest_key(project, name, number))
        if raw is None:
            raise NotFound(f"model {name}@{number} not found")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"the manifest of {name}@{number} cannot be read: {exc}"
                                ) from exc
        tags = tuple(tag for tag, n in self.tags(name, project=project).items() if n == number)
        data.setdefault("project", project)
        return ModelVersion.from_dict(data, tags)

    # files for engines ---------------------------------------------------------------

    def materialize(self, version: ModelVersion) -> Path:
        """A directory with the version's files under their original names (hard links)."""
        folder = self.files_path(version)
        folder.mkdir(parents=True, exist_ok=True)
        for blob in version.blobs:
            link = folder / check_filename(blob.filename)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    source = self._local_blob(blob.digest)
                except NotFound:
                    raise RegistryError(f"blob {blob.digest} of {version.ref} is missing "
                                        "from the store; run `llmos models verify`") from None
                try:
                    os.link(source, link)
                except FileExistsError:
                    pass  # another replica linked it first
                except OSError:
                    link.symlink_to(source)
        return folder

    def weights_path(self, version: ModelVersion) -> Path:
        """The GGUF file an engine loads (the first part, for a split file)."""
        folder = self.materialize(version)
        ggufs = sorted(b.filename for b in version.blobs if b.media_type == GGUF_MEDIA_TYPE)
        if not ggufs:
            raise RegistryError(f"model {version.ref} has no GGUF weights")
        return folder / ggufs[0]

    def weights_info(self, version: ModelVersion) -> tuple[GGUFInfo, int]:
        """The header of a version's weights (all parts of a split file) and their bytes."""
        parts = sorted((b for b in version.blobs if b.media_type == GGUF_MEDIA_TYPE),
                       key=lambda b: b.filename)
        if not parts:
            raise BadRequest(f"model {version.ref} has no GGUF weights", param="ref")
        infos = [check_gguf(self.blob_path(b.digest)) for b in parts]
        return _combined(infos), sum(b.size for b in parts)

    def blob_path(self, digest: str) -> Path:
        """A local file with the blob's content (pulled from the storage if need be)."""
        return self._local_blob(digest)

    def _local_blob(self, digest: str) -> Path:
        path = self.blobs.path(digest)
        if path.is_file():
            return path
        if self.remote is not None and remote_blobs.exists(self.remote, digest):
            # One pull of a blob at a time on this node; who waited finds it there.
            with self.writing(), self._lock(f"pull-{digest.removeprefix('sha256:')}",
                                            fcntl.LOCK_EX):
                if not path.is_file():
                    remote_blobs.pull(self.remote, digest, path)  # verified, renamed in
            return path
        raise NotFound(f"blob {digest} not found")

    def blob_size(self, digest: str) -> int | None:
        """The size of a blob the registry has (here or in its storage), else None."""
        path = self.blobs.path(digest)
        if path.is_file():
            return path.stat().st_size
        if self.remote is not None:
            record = remote_blobs.index(self.remote, digest)
            if record is not None:
                return int(str(record["size"]))
        return None

    def all_versions(self) -> builtins.list[ModelVersion]:
        """Every version of every project."""
        return [v for p in self.projects() for v in self.list(project=p)]

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        """Held by gc: no writer is between its first blob and its manifest."""
        return self._lock("store", fcntl.LOCK_EX)

    # paths ---------------------------------------------------------------------------

    def _manifest_key(self, project: str, name: str, number: int) -> str:
        return f"repos/{project}/{name}/_versions/{number}.json"

    def _tag_key(self, project: str, name: str, tag: str) -> str:
        return f"repos/{project}/{name}/_tags/{tag}"

    def files_path(self, version: ModelVersion) -> Path:
        return (self.root / "files" / version.project / version.name / "_versions"
                / str(version.version))


def _combined(parts: list[GGUFInfo]) -> GGUFInfo:
    """One header for a split file: the first part's metadata, every part's tensors."""
    return GGUFInfo(version=parts[0].version, metadata=parts[0].metadata,
                    tensors=[t for p in parts for t in p.tensors])


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
