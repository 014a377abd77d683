"""The storage contract on each backend: memory, a local directory, S3 (SeaweedFS), Azure
Blob (Azurite). GCS has no emulator here; its code path is obstore's, like the others."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from llmos.errors import ConfigError
from llmos.storage import ObjectStorage, StorageError, open_storage
from tests.azurite import ACCOUNT, KEY, Azurite, azure_env, azurite
from tests.seaweedfs import SeaweedFS, s3_env, seaweedfs
from tests.storage.contract import StorageContract

__all__ = ["azure_env", "azurite", "s3_env", "seaweedfs"]  # fixtures


class TestMemory(StorageContract):
    @pytest.fixture
    def storage(self) -> ObjectStorage:
        return open_storage("memory://")


class TestLocalDirectory(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> ObjectStorage:
        return open_storage(f"file://{tmp_path}/objects")


class TestS3(StorageContract):
    @pytest.fixture
    def storage(self, seaweedfs: SeaweedFS, s3_env: None) -> ObjectStorage:
        return open_storage(f"s3://llmos/{uuid.uuid4().hex}?endpoint={seaweedfs.endpoint}"
                            f"&region={seaweedfs.region}")

    def test_a_missing_bucket_says_so(self, seaweedfs: SeaweedFS, s3_env: None) -> None:
        storage = open_storage(f"s3://no-such-bucket/x?endpoint={seaweedfs.endpoint}"
                               "&region=us-east-1")
        with pytest.raises(StorageError, match="the bucket does not exist"):
            storage.get("a")


def test_s3_with_wrong_credentials_is_one_line_naming_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = SeaweedFS(tmp_path / "seaweedfs", identities={"right-key": "right-secret"})
    server.start()
    try:
        url = f"s3://models/x?endpoint={server.endpoint}&region=us-east-1"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "right-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        with pytest.raises(StorageError) as caught:
            open_storage(url).put("a", b"x")
        message = caught.value.message
        assert message.startswith("S3 at s3://models/x") and "\n" not in message
        assert "refused the credentials" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert "wrong-secret" not in message
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "right-secret")
        with pytest.raises(StorageError, match="the bucket does not exist"):
            open_storage(url).get("a")  # the right key gets past: now it is the bucket
    finally:
        server.stop()


class TestAzure(StorageContract):
    @pytest.fixture
    def storage(self, azurite: Azurite, azure_env: None) -> ObjectStorage:
        return open_storage(f"az://llmos/{uuid.uuid4().hex}?account={ACCOUNT}"
                            f"&endpoint={azurite.endpoint}")

    def test_a_wrong_key_is_one_line_naming_the_backend_and_the_fix(
            self, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY[:-8] + "AAAAAAA=")
        storage = open_storage(f"az://llmos/x?account={ACCOUNT}&endpoint={azurite.endpoint}")
        with pytest.raises(StorageError) as caught:
            storage.put("a", b"x")
        message = caught.value.message
        assert "Azure Blob" in message and "refused the credentials" in message
        assert "AZURE_STORAGE_ACCOUNT_KEY" in message and "\n" not in message

    def test_a_missing_container_says_so(self, azurite: Azurite, azure_env: None) -> None:
        storage = open_storage(f"az://nothing-here/x?account={ACCOUNT}"
                               f"&endpoint={azurite.endpoint}")
        with pytest.raises(StorageError, match="the container does not exist"):
            storage.get("a")


def test_an_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    # A port held bound but not listening refuses connections, and no other process
    # (nor the kernel, as a connection's own source port) can take it meanwhile: a
    # port that was merely free once was answered by something else in CI.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        storage = open_storage(f"s3://b/p?endpoint=http://127.0.0.1:{port}&region=us-east-1")
        with pytest.raises(StorageError, match="cannot reach S3"):
            storage.head("a")


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://x/y", "the scheme is one of"),
    ("s3://b/p?colour=blue", "unknown option colour"),
    ("s3:///p", "needs a bucket"),
    ("file://host/p", "on this machine"),
])
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_storage(url)


def test_an_unreachable_endpoint_whose_port_holds_401_is_not_a_credentials_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The error text names the endpoint: port 40173 once made "cannot reach" read as
    "refused the credentials" (a flaky CI failure, by the port the kernel gave)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for port in (*range(40100, 40200), *range(40300, 40400)):
        with socket.socket() as held:
            try:
                held.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: the next one
            storage = open_storage(f"s3://b/p?endpoint=http://127.0.0.1:{port}&region=us-east-1")
            with pytest.raises(StorageError, match="cannot reach S3"):
                storage.head("a")
            return
    pytest.fail("no free port in 40100-40199 or 40300-40399")
