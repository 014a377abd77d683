"""Shared fixtures: a real `llmos serve` subprocess, and service lookups that skip or fail."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from llmos.bus.memory import MemoryBus

REQUIRE_SERVICES = bool(os.environ.get("LLMOS_REQUIRE_SERVICES"))


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (in CI) when a service the test needs does not answer."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return
    except OSError:
        message = f"{name} is not reachable at {host}:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} (LLMOS_REQUIRE_SERVICES is set)")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningServer:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus metric over the label sets that include ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        total = 0.0
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name == name and wanted <= set(label_text.rstrip("}").split(",")):
                total += float(value)
        return total


SERVER_ENV = {
    "LLMOS_ENGINE__SLOTS": "16",
    "LLMOS_ENGINE__CTX_SIZE": "4096",  # 256 tokens per slot
    "LLMOS_ENGINE__THREADS": "2",
    "LLMOS_ENGINE__CACHE_RAM_MIB": "64",
}


def start_server(home: Path, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None, ready_path: str = "/readyz") -> RunningServer:
    """`llmos serve` on a free port, once ``ready_path`` answers 200 (``/readyz``: the
    default model answers; ``/api/models``: the API is up, with or without a replica)."""
    port = free_port()
    env = os.environ | SERVER_ENV | {"LLMOS_HOME": str(home)} | (extra_env or {})
    log = home / "server.out"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos", "serve", "--port", str(port), *(args or [])],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    server = RunningServer(f"http://127.0.0.1:{port}", home, process, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llmos serve exited with {process.returncode}:\n"
                               + log.read_text()[-3000:])
        try:
            if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError("llmos serve did not become ready:\n" + log.read_text()[-3000:])


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` (by its own PID)."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def stop_server(server: RunningServer) -> None:
    stop_process(server.process, timeout=20)


@pytest.fixture(scope="session")
def llmos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server (real model, real engine) for every end-to-end test."""
    server = start_server(tmp_path_factory.mktemp("llmos-home"))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose slots hold 1,024 tokens (4 slots), for prompts that need room, as
    tools do (``llmos_server``'s slots hold 256)."""
    server = start_server(tmp_path_factory.mktemp("roomy-home"), {"LLMOS_ENGINE__SLOTS": "4"})
    try:
        yield server
    finally:
        stop_server(server)


@pytest_asyncio.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    """A connected in-process bus, closed after the test."""
    memory = MemoryBus()
    await memory.connect()
    yield memory
    await memory.close()
