"""A registry's files on this node, for engines: each blob as a local file (pulled from
the registry's storage when it is remote and the blob is not here yet), and each
version's files under their original names.

Layout under the registry's root::

    blobs/sha256/<hex>                                content-addressed, written once
    files/<project>/<name>/_versions/<version>/<file> hard links, original names
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from llmos.errors import BadRequest, NotFound, RegistryError
from llmos.registry.blobs import BlobStore
from llmos.registry.gguf import GGUFInfo, read_gguf
from llmos.registry.locks import StoreLocks
from llmos.registry.manifest import GGUF_MEDIA_TYPE, ModelVersion
from llmos.registry.metadata import check_filename
from llmos.storage import ObjectStorage
from llmos.storage import blobs as remote_blobs


class LocalFiles:
    def __init__(self, root: Path, blobs: BlobStore, locks: StoreLocks,
                 remote: ObjectStorage | None) -> None:
        self.root = root
        self.blobs = blobs
        self.locks = locks
        self.remote = remote

    def blob_path(self, digest: str) -> Path:
        """A local file with the blob's content (pulled from the storage if need be)."""
        path = self.blobs.path(digest)
        if path.is_file():
            return path
        if self.remote is not None and remote_blobs.exists(self.remote, digest):
            # One pull of a blob at a time on this node; who waited finds it there.
            with self.locks.writing(), self.locks.pull(digest):
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

    def materialize(self, version: ModelVersion) -> Path:
        """A directory with the version's files under their original names (hard links)."""
        folder = self.folder(version)
        folder.mkdir(parents=True, exist_ok=True)
        for blob in version.blobs:
            link = folder / check_filename(blob.filename)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    source = self.blob_path(blob.digest)
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
        infos = [read_gguf(self.blob_path(b.digest)) for b in parts]
        return combined(infos), sum(b.size for b in parts)

    def folder(self, version: ModelVersion) -> Path:
        """Where ``materialize`` puts the version's files."""
        return (self.root / "files" / version.project / version.name / "_versions"
                / str(version.version))

    def remove(self, version: ModelVersion) -> None:
        """Its files folder (the links; the blobs wait for gc)."""
        shutil.rmtree(self.folder(version), ignore_errors=True)


def combined(parts: list[GGUFInfo]) -> GGUFInfo:
    """One header for a split file: the first part's metadata, every part's tensors."""
    return GGUFInfo(version=parts[0].version, metadata=parts[0].metadata,
                    tensors=[t for p in parts for t in p.tensors])
