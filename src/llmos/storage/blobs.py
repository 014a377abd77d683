"""Blobs in object storage: stored as parts, resumable, verified on every read.

Layout under the storage root::

    blobs/sha256/<hex>/parts/<n:06d>-<part sha256>   the content, part by part
    blobs/sha256/<hex>/index.json                     written last: the blob exists

Why parts and not one object through S3 multipart or Azure blocks: a multipart
upload in obstore (as in the ``object_store`` crate beneath it) lives only in
the process that started it, so a cut upload cannot be resumed by the next
try. Parts that are objects of their own resume on every backend with nothing
but put, list and get: a new try lists the parts already there (each part's
name carries its digest, and a put is atomic, so a listed part is whole) and
sends the rest. Reads fetch parts in parallel and hash the whole in order as
they arrive (a resumed read checks the parts it already has against their own
digests). A blob is visible only once ``index.json`` is written, so a
half-pushed blob never is; ``collect_parts`` removes the parts of uploads that
never finished.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmos.errors import DigestMismatch, LLMOSError, NotFound
from llmos.storage.base import ObjectExists, ObjectStorage

PART_SIZE = 16 << 20
CONCURRENCY = 4
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Sent:
    digest: str
    size: int
    sent_bytes: int
    """Bytes that went over the wire this time (0 when the blob was there already)."""
    skipped_parts: int


def blob_prefix(digest: str) -> str:
    from llmos.registry.refs import check_digest

    return f"blobs/sha256/{check_digest(digest).removeprefix('sha256:')}"


def exists(storage: ObjectStorage, digest: str) -> bool:
    return storage.head(f"{blob_prefix(digest)}/index.json") is not None


def index(storage: ObjectStorage, digest: str) -> dict[str, object] | None:
    raw = storage.get(f"{blob_prefix(digest)}/index.json")
    if raw is None:
        return None
    data: dict[str, object] = json.loads(raw)
    return data


def push(storage: ObjectStorage, source: Path, digest: str, *, part_size: int = PART_SIZE,
         concurrency: int = CONCURRENCY, progress: Progress | None = None) -> Sent:
    """Upload ``source`` as blob ``digest``: nothing if it is there, else the missing parts.

    Parts are read in order (the whole file is hashed on the way and must match
    ``digest`` before the blob is made visible) and sent ``concurrency`` at a time.
    """
    prefix = blob_prefix(digest)
    size = source.stat().st_size
    raw_index = storage.get(f"{prefix}/index.json")
    if raw_index is not None:
        # Written again (same content): its time is fresh, so a gc elsewhere that still
        # thinks no version names this blob leaves it for a grace period.
        storage.put(f"{prefix}/index.json", raw_index)
        if progress is not None:
            progress(size)
        return Sent(digest, size, 0, 0)
    have: dict[int, tuple[str, int]] = {}
    for info in storage.list(f"{prefix}/parts"):
        name = info.path.rsplit("/", 1)[-1]
        position, _, stored_digest = name.partition("-")
        if position.isdigit():
            have[int(position)] = (stored_digest, info.size)
    whole = hashlib.sha256()
    parts: list[dict[str, object]] = []
    sent = skipped = 0
    with source.open("rb") as f, concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        pending: set[concurrent.futures.Future[int]] = set()
        number = 0
        while chunk := f.read(part_size):
            whole.update(chunk)
            part_digest = hashlib.sha256(chunk).hexdigest()
            parts.append({"n": number, "size": len(chunk), "sha256": part_digest})
            if have.get(number) == (part_digest, len(chunk)):
                skipped += 1
                if progress is not None:
                    progress(len(chunk))
            else:
                if len(pending) >= concurrency:
                    done, pending = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    sent += sum(d.result() for d in done)
                pending.add(pool.submit(_put_part, storage, f"{prefix}/parts/"
                                        f"{number:06d}-{part_digest}", chunk, progress))
            number += 1
        for future in concurrent.futures.as_completed(pending):
            sent += future.result()
    actual = f"sha256:{whole.hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"{source} hashes to {actual}, not {digest}: it changed while "
                             "it was sent; nothing was made visible")
    record = {"digest": digest, "size": size, "part_size": part_size, "parts": parts,
              "created_at": time.time()}
    try:
        storage.put(f"{prefix}/index.json", json.dumps(record).encode(), create=True)
    except ObjectExists:
        pass  # another push of the same content finished first: the same bytes
    return Sent(digest, size, sent, skipped)


def _put_part(storage: ObjectStorage, path: str, data: bytes,
              progress: Progress | None) -> int:
    storage.put(path, data)
    if progress is not None:
        progress(len(data))
    return len(data)


def pull(storage: ObjectStorage, digest: str, target: Path, *,
         concurrency: int = CONCURRENCY, progress: Progress | None = None) -> int:
    """Download blob ``digest`` to ``target``, verified; the bytes received.

    Parts are fetched ``concurrency`` at a time; the whole is hashed in order as they
    come, and the file appears at ``target`` only once that matches. A cut try leaves
    ``<target>.partial``: the next one fetches only the parts not already in it (each
    checked against its part digest).
    """
    record = index(storage, digest)
    if record is None:
        raise NotFound(f"blob {digest} is not in {storage.url}")
    prefix = blob_prefix(digest)
    parts = record["parts"]
    part_size = record["part_size"]
    size = record["size"]
    if not isinstance(parts, list) or not isinstance(part_size, int) or not isinstance(
            size, int):
        raise LLMOSError(f"the index of blob {digest} in {storage.url} is malformed")
    partial = target.with_name(f"{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    resuming = partial.exists()
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    received = 0

    def fetch(p: dict[str, object]) -> tuple[bytes, int]:
        """One part's bytes (from the partial file if a cut try left it whole) and how
        many of them came over the wire."""
        offset = int(str(p["n"])) * part_size
        if resuming:
            local = os.pread(fd, int(str(p["size"])), offset)
            if hashlib.sha256(local).hexdigest() == p["sha256"]:
                if progress is not None:
                    progress(len(local))
                return local, 0
        data = storage.get(f"{prefix}/parts/{int(str(p['n'])):06d}-{p['sha256']}")
        if data is None:
            raise LLMOSError(f"blob {digest} in {storage.url} lacks part {p['n']}")
        if len(data) != p["size"]:
            raise DigestMismatch(f"part {p['n']} of blob {digest} in {storage.url} is "
                                 "corrupt (its size does not match); nothing was kept")
        # (its content is checked by the digest of the whole, hashed in order below: a
        # second hash per part would cost a core on every pull)
        os.pwrite(fd, data, offset)
        if progress is not None:
            progress(len(data))
        return data, len(data)

    try:
        os.ftruncate(fd, size)
        whole = hashlib.sha256()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            window: collections.deque[concurrent.futures.Future[tuple[bytes, int]]] = (
                collections.deque())
            for p in parts:
                window.append(pool.submit(fetch, p))
                if len(window) > 2 * concurrency:
                    data, got = window.popleft().result()
                    whole.update(data)
                    received += got
            while window:
                data, got = window.popleft().result()
                whole.update(data)
                received += got
        actual = f"sha256:{whole.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"blob {digest} in {storage.url} is corrupt: its content "
                                 f"hashes to {actual}; nothing was kept")
        os.fsync(fd)
    except DigestMismatch:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    os.replace(partial, target)
    return received


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def read_range(storage: ObjectStorage, digest: str, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` (exclusive) of a blob, from the parts that hold them."""
    record = index(storage, digest)
    if record is None:
        raise NotFound(f"blob {digest} is not in {storage.url}")
    part_size = int(str(record["part_size"]))
    prefix = blob_prefix(digest)
    out = bytearray()
    for p in record["parts"]:  # type: ignore[attr-defined]
        first = int(p["n"]) * part_size
        last = first + int(p["size"])
        if last <= start or first >= end:
            continue
        name = f"{prefix}/parts/{int(p['n']):06d}-{p['sha256']}"
        out += storage.get_range(name, max(start, first) - first, min(end, last) - first)
    return bytes(out)


def delete(storage: ObjectStorage, digest: str) -> None:
    """Remove a blob: its index first (so it stops existing), then its parts."""
    prefix = blob_prefix(digest)
    storage.delete(f"{prefix}/index.json")
    for info in storage.list(f"{prefix}/parts"):
        storage.delete(info.path)


def digests(storage: ObjectStorage) -> list[str]:
    """Every blob that exists (has an index)."""
    return sorted(f"sha256:{i.path.split('/')[2]}" for i in storage.list("blobs/sha256")
                  if i.path.endswith("/index.json"))


def collect_parts(storage: ObjectStorage, *, grace_s: float = 3600.0) -> tuple[int, int]:
    """Delete the parts of uploads that never finished (none newer than ``grace_s``):
    (parts, bytes) removed."""
    objects = storage.list("blobs/sha256")
    complete = {i.path.rsplit("/", 1)[0] for i in objects if i.path.endswith("/index.json")}
    now = time.time()
    by_blob: dict[str, list[tuple[str, int, float]]] = {}
    for info in objects:
        if "/parts/" in info.path:
            blob = info.path.split("/parts/")[0]
            by_blob.setdefault(blob, []).append((info.path, info.size, info.modified))
    removed = freed = 0
    for blob, parts in by_blob.items():
        if blob in complete or any(now - modified < grace_s for _, _, modified in parts):
            continue
        for path, size, _ in parts:
            storage.delete(path)
            removed += 1
            freed += size
    return removed, freed

