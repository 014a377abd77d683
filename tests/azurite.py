"""A real Azure Blob server for tests: Azurite (npm), stopped by its PID."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public; it guards nothing)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> str | None:
    beside = ROOT / ".venv" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if beside.exists():
        return str(beside)
    near_python = Path(sys.executable).parent.parent / "azurite" / "node_modules" / ".bin"
    if (near_python / "azurite-blob").exists():
        return str(near_python / "azurite-blob")
    return shutil.which("azurite-blob")


class Azurite:
    def __init__(self, directory: Path) -> None:
        binary = azurite_binary()
        if binary is None:
            message = "Azurite (npm install azurite@3, done by `make install`) is not installed"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "azurite.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                 "--location", str(self.directory), "--skipApiVersionCheck", "--silent"],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.endpoint, timeout=2)
                return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Azurite did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def create_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient(self.endpoint, credential={"account_name": ACCOUNT,
                                                              "account_key": KEY})
        try:
            client.create_container(name)
        except ResourceExistsError:
            pass

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """An Azurite for the module, with a container ``llmos``."""
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        server.create_container("llmos")
        yield server
    finally:
        server.stop()


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
