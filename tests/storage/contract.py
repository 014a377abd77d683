"""What every object storage backend must do, run against each one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from llmos.errors import DigestMismatch, NotFound
from llmos.storage import ObjectExists, ObjectInfo, ObjectStorage
from llmos.storage import blobs as remote

PART = 256 << 10  # small parts, so a few MiB make many


def sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def a_file(tmp_path: Path, size: int = 5 * PART + 1234, name: str = "w.gguf") -> tuple[Path, str]:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return path, sha(data)


class Cut(Exception):
    """The connection dropped (simulated, after some calls went through)."""


class Flaky(ObjectStorage):
    """Real storage underneath; fails the ``fail_at``-th put (or get) of a part, counting
    the bytes each call would have put on the wire."""

    def __init__(self, inner: ObjectStorage, *, fail_put_at: int | None = None,
                 fail_get_at: int | None = None) -> None:
        self.inner = inner
        self.scheme, self.url = inner.scheme, inner.url
        self.fail_put_at, self.fail_get_at = fail_put_at, fail_get_at
        self.puts = self.gets = 0
        self.bytes_out = self.bytes_in = 0

    def put(self, path: str, data: bytes, *, create: bool = False) -> None:
        if "/parts/" in path:
            self.puts += 1
            self.bytes_out += len(data)
            if self.puts == self.fail_put_at:
                raise Cut(path)
        self.inner.put(path, data, create=create)

    def get(self, path: str) -> bytes | None:
        data = self.inner.get(path)
        if "/parts/" in path and data is not None:
            self.gets += 1
            self.bytes_in += len(data)
            if self.gets == self.fail_get_at:
                raise Cut(path)
        return data

    def get_range(self, path: str, start: int, end: int) -> bytes:
        return self.inner.get_range(path, start, end)

    def head(self, path: str) -> ObjectInfo | None:
        return self.inner.head(path)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, path: str) -> None:
        self.inner.delete(path)


class StorageContract:
    """Subclasses provide a ``storage`` fixture: an empty storage, fresh per test."""

    def test_objects_round_trip(self, storage: ObjectStorage) -> None:
        assert storage.get("a/b.json") is None
        assert storage.head("a/b.json") is None
        storage.put("a/b.json", b"hello")
        assert storage.get("a/b.json") == b"hello"
        info = storage.head("a/b.json")
        assert info is not None and info.size == 5 and info.modified > 0
        storage.put("a/b.json", b"again")
        assert storage.get("a/b.json") == b"again"
        storage.delete("a/b.json")
        storage.delete("a/b.json")  # gone already: no error
        assert storage.get("a/b.json") is None

    def test_create_only_refuses_an_existing_object(self, storage: ObjectStorage) -> None:
        storage.put("v/1.json", b"first", create=True)
        with pytest.raises(ObjectExists):
            storage.put("v/1.json", b"second", create=True)
        assert storage.get("v/1.json") == b"first"

    def test_ranges_and_listing(self, storage: ObjectStorage) -> None:
        storage.put("r/x", b"0123456789")
        assert storage.get_range("r/x", 2, 5) == b"234"
        for path in ("l/b/2", "l/a", "l/b/1", "other/z"):
            storage.put(path, b"x")
        assert [i.path for i in storage.list("l")] == ["l/a", "l/b/1", "l/b/2"]
        assert storage.list("nothing/here") == []

    def test_push_and_pull_a_blob(self, storage: ObjectStorage, tmp_path: Path) -> None:
        source, digest = a_file(tmp_path)
        sent = remote.push(storage, source, digest, part_size=PART)
        assert sent.sent_bytes == source.stat().st_size and sent.skipped_parts == 0
        assert remote.exists(storage, digest)
        assert remote.digests(storage) == [digest]
        target = tmp_path / "pulled" / "w.gguf"
        seen: list[int] = []
        received = remote.pull(storage, digest, target, progress=seen.append)
        assert target.read_bytes() == source.read_bytes()
        assert received == sum(seen) == source.stat().st_size
        assert not list(target.parent.glob("*.partial"))
        data = source.read_bytes()
        assert remote.read_range(storage, digest, PART - 10, 2 * PART + 10) == data[
            PART - 10:2 * PART + 10]
        again = remote.push(storage, source, digest, part_size=PART)
        assert again.sent_bytes == 0  # an existence check: nothing is sent

    def test_a_cut_push_resumes_with_at_most_one_part_again(
            self, storage: ObjectStorage, tmp_path: Path) -> None:
        source, digest = a_file(tmp_path, size=8 * PART + 77)
        first = Flaky(storage, fail_put_at=5)
        with pytest.raises(Cut):
            remote.push(first, source, digest, part_size=PART, concurrency=1)
        assert not remote.exists(storage, digest)  # a half-pushed blob is not visible
        second = Flaky(storage)
        result = remote.push(second, source, digest, part_size=PART, concurrency=1)
        size = source.stat().st_size
        assert result.skipped_parts == 4
        assert first.bytes_out + second.bytes_out <= size + PART
        assert remote.exists(storage, digest)
        target = tmp_path / "back"
        remote.pull(storage, digest, target)
        assert target.read_bytes() == source.read_bytes()

    def test_a_cut_pull_resumes_and_keeps_nothing_visible(
            self, storage: ObjectStorage, tmp_path: Path) -> None:
        source, digest = a_file(tmp_path, size=8 * PART)
        remote.push(storage, source, digest, part_size=PART)
        target = tmp_path / "pulled.gguf"
        first = Flaky(storage, fail_get_at=5)
        with pytest.raises(Cut):
            remote.pull(first, digest, target, concurrency=1)
        assert not target.exists()
        second = Flaky(storage)
        remote.pull(second, digest, target, concurrency=1)
        assert target.read_bytes() == source.read_bytes()
        assert second.bytes_in <= source.stat().st_size - 4 * PART

    def test_a_corrupt_part_keeps_nothing(self, storage: ObjectStorage, tmp_path: Path) -> None:
        source, digest = a_file(tmp_path)
        remote.push(storage, source, digest, part_size=PART)
        part = storage.list(f"{remote.blob_prefix(digest)}/parts")[2]
        storage.put(part.path, b"X" * part.size)  # same size, other bytes
        target = tmp_path / "pulled.gguf"
        with pytest.raises(DigestMismatch, match="corrupt"):
            remote.pull(storage, digest, target)
        assert not target.exists() and not list(tmp_path.glob("*.partial"))

    def test_a_wrong_digest_is_never_made_visible(self, storage: ObjectStorage,
                                                  tmp_path: Path) -> None:
        source, _ = a_file(tmp_path)
        wrong = sha(b"something else")
        with pytest.raises(DigestMismatch):
            remote.push(storage, source, wrong, part_size=PART)
        assert not remote.exists(storage, wrong)
        with pytest.raises(NotFound):
            remote.pull(storage, wrong, tmp_path / "x")

    def test_gc_removes_the_parts_of_an_abandoned_upload(
            self, storage: ObjectStorage, tmp_path: Path) -> None:
        kept, kept_digest = a_file(tmp_path, name="kept")
        remote.push(storage, kept, kept_digest, part_size=PART)
        cut, cut_digest = a_file(tmp_path, name="cut")
        with pytest.raises(Cut):
            remote.push(Flaky(storage, fail_put_at=3), cut, cut_digest, part_size=PART,
                        concurrency=1)
        assert remote.collect_parts(storage) == (0, 0)  # young: it may resume
        removed, freed = remote.collect_parts(storage, grace_s=0)
        assert (removed, freed) == (2, 2 * PART)
        assert storage.list(f"{remote.blob_prefix(cut_digest)}") == []
        assert remote.digests(storage) == [kept_digest]
        remote.delete(storage, kept_digest)
        assert remote.digests(storage) == [] and storage.list("blobs") == []
