"""The registry with its manifests and blobs in object storage (S3 on SeaweedFS, Azure on
Azurite): nodes share it, each keeps a verified local cache of the blobs it uses."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from llmos.errors import NotFound
from llmos.registry import upkeep
from llmos.registry.local import LocalRegistry
from llmos.storage import ObjectStorage, open_storage
from llmos.storage import blobs as remote
from tests.azurite import ACCOUNT, Azurite, azure_env, azurite
from tests.registry.test_gguf import make_gguf
from tests.seaweedfs import SeaweedFS, s3_env, seaweedfs

__all__ = ["azure_env", "azurite", "s3_env", "seaweedfs"]  # fixtures


@pytest.fixture(params=["s3", "azure"])
def storage(request: pytest.FixtureRequest) -> ObjectStorage:
    prefix = uuid.uuid4().hex
    if request.param == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        request.getfixturevalue("s3_env")
        return open_storage(f"s3://llmos/{prefix}?endpoint={server.endpoint}"
                            f"&region={server.region}")
    blob_server: Azurite = request.getfixturevalue("azurite")
    request.getfixturevalue("azure_env")
    return open_storage(f"az://llmos/{prefix}?account={ACCOUNT}&endpoint={blob_server.endpoint}")


def node(tmp_path: Path, storage: ObjectStorage, name: str) -> LocalRegistry:
    """One machine's registry: the shared storage, and a cache of its own."""
    return LocalRegistry(tmp_path / name, storage=storage)


def gguf(tmp_path: Path, variant: bytes, name: str = "w.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(make_gguf() + variant)
    return path


def test_a_version_made_on_one_node_is_served_on_another(
        storage: ObjectStorage, tmp_path: Path) -> None:
    a = node(tmp_path, storage, "a")
    b = node(tmp_path, storage, "b")
    made = a.import_path(gguf(tmp_path, b"1"), "acme/tiny", label="from a").version
    digest = made.blobs[0].digest
    assert remote.exists(storage, digest)
    seen = b.catalog.get("acme/tiny")
    assert seen == made and [v.ref for v in b.catalog.list()] == ["acme/tiny@1"]
    assert not b.blobs.exists(digest)  # b has not needed it yet
    path = b.files.weights_path(seen)  # pulled, verified, hard-linked under its name
    assert path.name == "w.gguf" and path.read_bytes() == (tmp_path / "w.gguf").read_bytes()
    assert b.blobs.exists(digest)
    b.tag("acme/tiny@1", "prod")
    assert a.catalog.get("acme/tiny:prod").version == 1


def test_two_nodes_never_take_the_same_version_number(
        storage: ObjectStorage, tmp_path: Path) -> None:
    nodes = [node(tmp_path, storage, f"n{i}") for i in range(3)]
    sources = [gguf(tmp_path, bytes([i]), name=f"w{i}.gguf") for i in range(3)]
    refs: list[str] = []

    def run(i: int) -> None:
        refs.append(nodes[i].import_path(sources[i], "shared").version.ref)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(refs) == ["shared@1", "shared@2", "shared@3"]


def test_the_same_blob_is_not_sent_twice(storage: ObjectStorage, tmp_path: Path) -> None:
    a = node(tmp_path, storage, "a")
    first = a.import_path(gguf(tmp_path, b"same"), "one").version
    before = storage.list("blobs")
    a.import_path(gguf(tmp_path, b"same"), "two")  # another repository, the same content
    after = storage.list("blobs")
    # Nothing new, and no part sent again; only index.json is rewritten as it was, on
    # purpose (a fresh time keeps a gc elsewhere from taking the blob), so its time moves.
    assert [(o.path, o.size) for o in after] == [(o.path, o.size) for o in before]
    assert [o for o in after if "/parts/" in o.path] == [o for o in before if "/parts/" in o.path]
    assert remote.digests(storage) == [first.blobs[0].digest]


def test_delete_gc_and_verify(storage: ObjectStorage, tmp_path: Path) -> None:
    a = node(tmp_path, storage, "a")
    kept = a.import_path(gguf(tmp_path, b"kept"), "kept").version
    gone = a.import_path(gguf(tmp_path, b"gone"), "gone").version
    a.delete("gone@1")
    with pytest.raises(NotFound):
        node(tmp_path, storage, "b").catalog.get("gone@1")
    report = upkeep.gc(a, grace_s=0)
    assert report.blobs == 2  # the remote blob and the cached copy
    assert remote.digests(storage) == [kept.blobs[0].digest]
    assert not remote.exists(storage, gone.blobs[0].digest)
    assert upkeep.verify(a) == []
    cached = a.blobs.path(kept.blobs[0].digest)
    cached.write_bytes(b"X" + cached.read_bytes()[1:])  # a flipped byte in one node's cache
    problems = upkeep.verify(a)
    assert len(problems) == 1 and "cached copy" in problems[0].problem
    assert not cached.exists()  # dropped: the next use pulls a good copy
    assert a.files.blob_path(kept.blobs[0].digest).read_bytes() == make_gguf() + b"kept"


def test_a_corrupt_remote_part_is_never_used(storage: ObjectStorage, tmp_path: Path) -> None:
    a = node(tmp_path, storage, "a")
    version = a.import_path(gguf(tmp_path, os.urandom(64)), "m").version
    digest = version.blobs[0].digest
    part = storage.list(f"{remote.blob_prefix(digest)}/parts")[0]
    storage.put(part.path, b"Z" * part.size)
    b = node(tmp_path, storage, "b")
    with pytest.raises(Exception, match="corrupt"):
        b.files.weights_path(b.catalog.get("m"))
    assert not b.blobs.exists(digest)
    assert not list((tmp_path / "b").rglob("*.partial"))


def test_nodes_pulling_one_blob_at_once_all_get_it(storage: ObjectStorage,
                                                    tmp_path: Path) -> None:
    made = node(tmp_path, storage, "a").import_path(gguf(tmp_path, os.urandom(1 << 20)),
                                                    "m").version
    b = node(tmp_path, storage, "b")
    results: list[object] = []

    def use() -> None:
        try:
            results.append(b.files.weights_path(b.catalog.get("m")).read_bytes()[:4])
        except Exception as exc:  # the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b"GGUF"] * 4
    assert b.blobs.digests() == [made.blobs[0].digest]
