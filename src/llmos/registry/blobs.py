"""Content-addressed blobs on local disk: written to ``*.part``, renamed in once verified."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from llmos.errors import DigestMismatch, LLMOSError, RegistryError
from llmos.registry.refs import check_digest

CHUNK = 8 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
Progress = Callable[[int], None]
"""Called with the number of bytes just handled."""


class StorageFull(LLMOSError):
    status = 507
    type = "server_error"
    code = "insufficient_storage"


class BlobCorrupt(LLMOSError):
    """A stored blob no longer hashes to its digest: it is not served."""

    status = 500
    type = "server_error"
    code = "blob_corrupt"


@dataclass(frozen=True)
class Stored:
    digest: str
    size: int
    new: bool
    """False when the store had this content already (no new bytes were kept)."""


class BlobStore:
    """``<root>/sha256/<hex>``: one file per content, shared by every version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "sha256"

    def path(self, digest: str) -> Path:
        return self.folder / check_digest(digest).removeprefix("sha256:")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def digests(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(f"sha256:{p.name}" for p in self.folder.iterdir()
                      if _HEX64.fullmatch(p.name) and p.is_file())

    def put_file(self, source: Path, *, move: bool = False,
                 check: Callable[[Path], None] | None = None,
                 progress: Progress | None = None) -> Stored:
        """Store a file's content. ``move`` renames it in when it is on the same disk."""
        if move:
            if check is not None:
                check(source)  # before the move: a refused file stays where it was
            part = self._part()
            try:
                os.replace(source, part)
            except OSError:
                pass  # another disk: copy instead
            else:
                try:
                    digest = hash_file(part, progress)
                    return self._commit(part, digest, part.stat().st_size, None, None)
                finally:
                    part.unlink(missing_ok=True)
        with source.open("rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""), check=check,
                                   progress=progress)

    def put_stream(self, chunks: Iterable[bytes], *, expected: str | None = None,
                   check: Callable[[Path], None] | None = None,
                   progress: Progress | None = None) -> Stored:
        """Store what ``chunks`` yields, hashing as it is written (one pass)."""
        if expected is not None:
            check_digest(expected)
        part = self._part()
        try:
            h = hashlib.sha256()
            size = 0
            try:
                with part.open("wb") as out:
                    for chunk in chunks:
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                raise storage_error(exc, self.root) from exc
            return self._commit(part, f"sha256:{h.hexdigest()}", size, expected, check)
        finally:
            part.unlink(missing_ok=True)

    def _part(self) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, self.root) from exc
        return self.folder / f".{uuid.uuid4().hex}.part"

    def _commit(self, part: Path, digest: str, size: int, expected: str | None,
                check: Callable[[Path], None] | None) -> Stored:
        if expected is not None and digest != expected:
            raise DigestMismatch(f"content has digest {digest}, not the {expected} it was "
                                 "sent as; nothing was kept", param="digest")
        if check is not None:
            check(part)
        target = self.path(digest)
        if target.is_file():
            os.utime(target)  # fresh again: gc's grace period counts from the last import
            return Stored(digest, size, new=False)
        os.replace(part, target)
        return Stored(digest, size, new=True)

    def verify(self, digest: str, progress: Progress | None = None) -> str | None:
        """None when the blob is there and hashes to its name, else what is wrong."""
        path = self.path(digest)
        if not path.is_file():
            return "missing"
        actual = hash_file(path, progress)
        return None if actual == digest else f"corrupt: its content hashes to {actual}"


def hash_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return f"sha256:{h.hexdigest()}"


def storage_error(exc: OSError, root: Path) -> LLMOSError:
    """An OS error while writing the store, as one message a user can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(root).free if root.exists() else 0
        return StorageFull(f"the model store at {root} is out of disk space "
                           f"({free / 2**20:.0f} MiB free); nothing was kept. Free some "
                           "space (`llmos models gc` removes unused blobs) and retry")
    return RegistryError(f"cannot write to the model store at {root}: {exc.strerror}")
