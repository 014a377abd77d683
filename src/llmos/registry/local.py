"""The registry on local disk.

Layout under its root::

    blobs/sha256/<hex>                         content-addressed, written once
    manifests/<project>/<name>/<version>.json  immutable
    tags/<project>/<name>/<tag>                the version number a tag points at
    files/<project>/<name>/<version>/<file>    hard links with the original names

A blob is written to ``*.part`` and renamed into place only once its digest is
known, so a half-written blob is never visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmos.errors import NotFound, RegistryError
from llmos.registry.refs import ModelRef, check_name, check_tag, parse_ref

_CHUNK = 8 << 20
GGUF_MEDIA_TYPE = "application/vnd.llmos.gguf"


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    filename: str


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    project: str
    created_at: float
    blobs: tuple[Blob, ...]
    label: str | None = None
    derived_from: str | None = None
    tags: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class LocalRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    # writing -----------------------------------------------------------------------

    def import_file(self, path: Path, name: str, *, tag: str = "latest",
                    project: str = "default", label: str | None = None,
                    move: bool = False) -> ModelVersion:
        """Store ``path`` as a new version of ``name`` (or return the version it already is)."""
        check_name(name)
        check_tag(tag)
        if not path.is_file():
            raise RegistryError(f"cannot import {path}: no such file")
        blob = self._put_blob(path, move=move)
        for existing in self.versions(name, project=project):
            if [b.digest for b in existing.blobs] == [blob.digest]:
                self._set_tag(project, name, tag, existing.version)
                return self.get(ModelRef(name, version=existing.version), project=project)
        versions = [v.version for v in self.versions(name, project=project)]
        version = ModelVersion(name=name, version=max(versions, default=0) + 1,
                               project=project, created_at=time.time(), blobs=(blob,),
                               label=label)
        self._write_manifest(version)
        self._set_tag(project, name, tag, version.version)
        return self.get(ModelRef(name, version=version.version), project=project)

    def _put_blob(self, path: Path, *, move: bool) -> Blob:
        size = path.stat().st_size
        folder = self.root / "blobs" / "sha256"
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".import-{uuid.uuid4().hex}.part"
        try:
            try:
                if not move:
                    raise OSError("copy requested")
                os.replace(path, part)
                digest = _sha256(part)
            except OSError:
                digest = _copy_hashing(path, part)
            target = self._blob_path(digest)
            if not target.exists():
                os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return Blob(digest=digest, size=size, media_type=GGUF_MEDIA_TYPE, filename=path.name)

    def _write_manifest(self, version: ModelVersion) -> None:
        path = self._manifest_path(version.project, version.name, version.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(version)
        data.pop("tags")
        tmp = path.with_suffix(".json.part")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)

    def _set_tag(self, project: str, name: str, tag: str, version: int) -> None:
        path = self.root / "tags" / project / name / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{tag}.part")
        tmp.write_text(str(version))
        os.replace(tmp, path)

    # reading -----------------------------------------------------------------------

    def versions(self, name: str, *, project: str = "default") -> list[ModelVersion]:
        folder = self.root / "manifests" / project / name
        if not folder.is_dir():
            return []
        numbers = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())
        return [self._read(project, name, n) for n in numbers]

    def list(self, *, project: str = "default") -> list[ModelVersion]:
        base = self.root / "manifests" / project
        if not base.is_dir():
            return []
        names = sorted(str(p.parent.relative_to(base)) for p in base.glob("**/*.json"))
        return [v for n in dict.fromkeys(names) for v in self.versions(n, project=project)]

    def get(self, ref: ModelRef | str, *, project: str = "default") -> ModelVersion:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.version is not None:
            number = ref.version
        elif ref.digest is not None:
            match = [v for v in self.versions(ref.name, project=project)
                     if any(b.digest == ref.digest for b in v.blobs)]
            if not match:
                raise NotFound(f"model {ref} not found")
            return match[-1]
        else:
            tag_path = self.root / "tags" / project / ref.name / (ref.tag or "latest")
            if not tag_path.is_file():
                raise NotFound(f"model {ref} not found; import it with `llmos models import`")
            number = int(tag_path.read_text())
        if not self._manifest_path(project, ref.name, number).is_file():
            raise NotFound(f"model {ref} not found")
        return self._read(project, ref.name, number)

    def _read(self, project: str, name: str, number: int) -> ModelVersion:
        data = json.loads(self._manifest_path(project, name, number).read_text())
        tags_dir = self.root / "tags" / project / name
        tags = tuple(sorted(
            p.name for p in tags_dir.glob("*")
            if not p.name.startswith(".") and p.read_text().strip() == str(number)
        )) if tags_dir.is_dir() else ()
        data["blobs"] = tuple(Blob(**b) for b in data["blobs"])
        return ModelVersion(**data, tags=tags)

    def materialize(self, version: ModelVersion) -> Path:
        """A directory with the version's files under their original names (hard links)."""
        folder = self.root / "files" / version.project / version.name / str(version.version)
        folder.mkdir(parents=True, exist_ok=True)
        for blob in version.blobs:
            link = folder / blob.filename
            if not link.exists():
                source = self._blob_path(blob.digest)
                try:
                    os.link(source, link)
                except OSError:
                    link.symlink_to(source)
        return folder

    def weights_path(self, version: ModelVersion) -> Path:
        folder = self.materialize(version)
        ggufs = sorted(b.filename for b in version.blobs if b.media_type == GGUF_MEDIA_TYPE)
        if not ggufs:
            raise RegistryError(f"model {version.ref} has no GGUF weights")
        return folder / ggufs[0]

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def _manifest_path(self, project: str, name: str, number: int) -> Path:
        return self.root / "manifests" / project / name / f"{number}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _copy_hashing(source: Path, target: Path) -> str:
    h = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return f"sha256:{h.hexdigest()}"
