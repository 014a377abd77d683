"""A node's cache pulls a version it lacks from a control plane's registry API."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llmos.agent.cache import NodeCache
from llmos.errors import RegistryError
from llmos.registry.local import LocalRegistry
from tests.conftest import RunningServer

pytestmark = pytest.mark.e2e


def test_a_version_is_pulled_once_verified_and_found_by_its_files(
        llmos_server: RunningServer, tmp_path: Path) -> None:
    base = httpx.get(f"{llmos_server.url}/api/models/gemma-3-270m@1", timeout=30).json()
    made = httpx.post(f"{llmos_server.url}/api/models/pulled-gemma/versions", timeout=30,
                      json={"files": [{"filename": b["filename"], "digest": b["digest"]}
                                      for b in base["blobs"]]})
    assert made.status_code == 201, made.text
    registry = LocalRegistry(tmp_path / "node" / "models")
    cache = NodeCache(registry, llmos_server.url)

    local = cache.resolve("pulled-gemma@1")
    assert local == "pulled-gemma@1"
    (blob,) = registry.catalog.get(local).blobs
    assert blob.digest == base["blobs"][0]["digest"]
    assert registry.blobs.path(blob.digest).stat().st_size == blob.size
    assert cache.resolved == {"pulled-gemma@1": "pulled-gemma@1"}

    # held: found by its files, nothing pulled again (the blob file is not rewritten)
    before = registry.blobs.path(blob.digest).stat().st_mtime_ns
    assert NodeCache(registry, llmos_server.url).resolve("pulled-gemma") == local
    assert registry.blobs.path(blob.digest).stat().st_mtime_ns == before

    with pytest.raises(RegistryError, match="no version nope"):
        cache.resolve("nope")
    httpx.delete(f"{llmos_server.url}/api/models/pulled-gemma@1", timeout=30)
