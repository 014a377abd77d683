from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmos.errors import BadRequest, NotFound
from llmos.registry import LocalRegistry, parse_ref


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "store")


def weights(tmp_path: Path, content: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_import_versions_and_tags(registry: LocalRegistry, tmp_path: Path) -> None:
    v1 = registry.import_file(weights(tmp_path, b"one"), "acme/tiny")
    v2 = registry.import_file(weights(tmp_path, b"two"), "acme/tiny", tag="staging")
    assert (v1.version, v2.version) == (1, 2)
    assert registry.get("acme/tiny").version == 1  # latest still points at 1
    assert registry.get("acme/tiny:staging").version == 2
    assert registry.get("acme/tiny@2").blobs[0].digest == v2.blobs[0].digest
    assert registry.get(f"acme/tiny@{v1.blobs[0].digest}").version == 1
    assert [v.ref for v in registry.list()] == ["acme/tiny@1", "acme/tiny@2"]


def test_same_content_is_one_blob_and_one_version(registry: LocalRegistry,
                                                  tmp_path: Path) -> None:
    a = registry.import_file(weights(tmp_path, b"same", "a.gguf"), "m")
    b = registry.import_file(weights(tmp_path, b"same", "b.gguf"), "m")
    assert a.version == b.version == 1
    blobs = list((registry.root / "blobs" / "sha256").iterdir())
    assert len(blobs) == 1
    assert not list(registry.root.glob("**/*.part"))


def test_materialized_files_keep_their_names(registry: LocalRegistry, tmp_path: Path) -> None:
    version = registry.import_file(weights(tmp_path, b"gguf bytes", "w-q4.gguf"), "m")
    path = registry.weights_path(version)
    assert path.name == "w-q4.gguf"
    assert path.read_bytes() == b"gguf bytes"
    blob = registry.root / "blobs" / "sha256" / version.blobs[0].digest.split(":")[1]
    assert os.stat(path).st_ino == os.stat(blob).st_ino


def test_move_import_consumes_the_file(registry: LocalRegistry, tmp_path: Path) -> None:
    source = weights(tmp_path, b"moved")
    registry.import_file(source, "m", move=True)
    assert not source.exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "Upper", "a/b/c", "a/../b", "",
                                  "-dash", "a%2F..%2Fb"])
def test_bad_names_are_refused(registry: LocalRegistry, tmp_path: Path, name: str) -> None:
    with pytest.raises(BadRequest):
        registry.import_file(weights(tmp_path, b"x"), name)
    assert not (registry.root / "manifests").exists()


@pytest.mark.parametrize("ref", ["m@sha256:../../etc", "m@abc", "m:../x", "M:latest"])
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(BadRequest):
        parse_ref(ref)


def test_unknown_model_is_not_found(registry: LocalRegistry) -> None:
    with pytest.raises(NotFound):
        registry.get("nothing")
