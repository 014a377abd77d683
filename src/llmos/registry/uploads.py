"""Resumable blob uploads: a session per blob, appended to until it is whole.

A client that is cut off asks the session's offset (the bytes the server kept) and
sends only the rest. The blob becomes visible when the session is finished: the
content must hash to the digest the session was opened for (and, for a ``*.gguf``,
have a valid header); otherwise nothing is kept.

Layout: ``<root>/uploads/<id>.json`` (digest, size, filename) and ``<id>.data``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llmos.errors import BadRequest, Conflict, DigestMismatch, NotFound
from llmos.registry.blobs import CHUNK, BlobStore, Stored, storage_error
from llmos.registry.gguf import read_gguf
from llmos.registry.metadata import check_filename, is_gguf_name
from llmos.registry.refs import check_digest

UPLOAD_ID_PATTERN = r"^[0-9a-f]{32}$"
_ID_RE = re.compile(UPLOAD_ID_PATTERN)


@dataclass(frozen=True)
class Upload:
    id: str
    digest: str
    size: int
    filename: str | None
    offset: int


class Uploads:
    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.folder = root / "uploads"
        self.blobs = blobs
        self._hashes: dict[str, tuple[tuple[int, int, int], hashlib._Hash]] = {}
        """Running hashes of sessions appended in order by this process (no re-read)."""
        self._lock = threading.Lock()

    def open(self, digest: str, size: int, filename: str | None = None) -> Upload:
        """A new session for ``digest``, or the unfinished one there is (to resume)."""
        check_digest(digest)
        if filename is not None:
            check_filename(filename)
        if size < 0:
            raise BadRequest("size cannot be negative", param="size")
        with self._lock:
            for upload in self._sessions():
                if upload.digest == digest and upload.size == size:
                    return upload
            upload_id = uuid.uuid4().hex
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / f"{upload_id}.data").touch()
                (self.folder / f"{upload_id}.json").write_text(json.dumps(
                    {"digest": digest, "size": size, "filename": filename,
                     "created_at": time.time()}))
            except OSError as exc:
                raise storage_error(exc, self.folder) from exc
            return self.get(upload_id)

    def get(self, upload_id: str) -> Upload:
        if not _ID_RE.fullmatch(upload_id):
            raise BadRequest(f"invalid upload id {upload_id[:40]!r}", param="upload_id")
        meta = self.folder / f"{upload_id}.json"
        data = self.folder / f"{upload_id}.data"
        if not meta.is_file() or not data.is_file():
            raise NotFound(f"no upload {upload_id}: it finished, failed or was collected")
        info = json.loads(meta.read_text())
        return Upload(upload_id, info["digest"], info["size"], info.get("filename"),
                      data.stat().st_size)

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> Upload:
        """Add bytes at ``offset``, which must be the session's offset; what arrives
        before a cut is kept, so the next try resumes from there. One writer at a time:
        a second client sending the same session meanwhile gets a 409."""
        with self._exclusive(upload_id) as out:
            upload = self.get(upload_id)
            if offset != upload.offset:
                raise Conflict(f"upload {upload_id} is at offset {upload.offset}, not "
                               f"{offset}; resume from there")
            running = self._hashes.pop(upload_id, None)
            hasher = running[1] if running and running[0] == _stamp(out, offset) else None
            if hasher is None and offset == 0:
                hasher = hashlib.sha256()
            written = offset
            try:
                out.seek(offset)
                try:
                    for chunk in chunks:
                        if written + len(chunk) > upload.size:
                            raise BadRequest(f"upload {upload_id} is {upload.size} bytes; "
                                             "more were sent", param="body")
                        out.write(chunk)
                        written += len(chunk)
                        if hasher is not None:
                            hasher.update(chunk)
                finally:
                    out.flush()
                    out.truncate(written)
                    os.fsync(out.fileno())
                    if hasher is not None:
                        self._hashes[upload_id] = (_stamp(out, written), hasher)
            except OSError as exc:
                raise storage_error(exc, self.folder) from exc
        return self.get(upload_id)

    @contextlib.contextmanager
    def _exclusive(self, upload_id: str) -> Iterator[BinaryIO]:
        self.get(upload_id)
        try:
            handle = (self.folder / f"{upload_id}.data").open("r+b")
        except FileNotFoundError:
            raise NotFound(f"no upload {upload_id}: it finished, failed or was collected"
                           ) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(f"upload {upload_id} is being sent by another client right "
                               "now") from None
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def finish(self, upload_id: str) -> Stored:
        """Check the whole content and make it a blob; on a mismatch nothing is kept."""
        with self._exclusive(upload_id) as handle:
            upload = self.get(upload_id)
            if upload.offset != upload.size:
                raise Conflict(f"upload {upload_id} has {upload.offset} of {upload.size} "
                               "bytes; send the rest first")
            data = self.folder / f"{upload_id}.data"
            running = self._hashes.pop(upload_id, None)
            # The running hash counts only if the file is as its last writer left it.
            if running is not None and running[0] == _stamp(handle, upload.size):
                actual = f"sha256:{running[1].hexdigest()}"
            else:
                h = hashlib.sha256()
                handle.seek(0)
                while chunk := handle.read(CHUNK):
                    h.update(chunk)
                actual = f"sha256:{h.hexdigest()}"
            try:
                if actual != upload.digest:
                    raise DigestMismatch(f"the upload hashes to {actual}, not "
                                         f"{upload.digest}; nothing was kept", param="digest")
                if upload.filename is not None and is_gguf_name(upload.filename):
                    read_gguf(data)
                target = self.blobs.path(upload.digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                new = not target.is_file()
                if new:
                    os.replace(data, target)
                else:
                    os.utime(target)  # fresh again: gc's grace period counts from now
                return Stored(upload.digest, upload.size, new=new)
            finally:
                data.unlink(missing_ok=True)
                (self.folder / f"{upload_id}.json").unlink(missing_ok=True)

    def cancel(self, upload_id: str) -> None:
        self.get(upload_id)
        self._hashes.pop(upload_id, None)
        for suffix in (".data", ".json"):
            (self.folder / f"{upload_id}{suffix}").unlink(missing_ok=True)

    def collect(self, grace_s: float) -> tuple[int, int]:
        """Remove sessions untouched for ``grace_s``: (sessions, bytes)."""
        now = time.time()
        removed = freed = 0
        for upload in self._sessions():
            data = self.folder / f"{upload.id}.data"
            if now - data.stat().st_mtime >= grace_s:
                freed += upload.offset
                self.cancel(upload.id)
                removed += 1
        return removed, freed

    def _sessions(self) -> list[Upload]:
        if not self.folder.is_dir():
            return []
        found = []
        for meta in sorted(self.folder.glob("*.json")):
            try:
                found.append(self.get(meta.stem))
            except (NotFound, BadRequest, ValueError, KeyError):
                continue
        return found


def _stamp(handle: BinaryIO, size: int) -> tuple[int, int, int]:
    """What a running hash was taken over: the file (inode), its size, its mtime."""
    stat = os.fstat(handle.fileno())
    return (stat.st_ino, size if stat.st_size == size else -1, stat.st_mtime_ns)
