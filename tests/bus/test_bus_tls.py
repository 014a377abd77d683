"""The bus over TLS where its broker serves TLS: ``nats+tls://`` against a nats-server of
the test's own, ``kafka+ssl://`` against Tansu behind a TLS-terminating proxy (Tansu
serves plain TCP; it advertises the proxy's address). Each with a self-signed
certificate: refused until trusted (``SSL_CERT_FILE``), then a message goes round."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from llmos.bus import Bus, open_bus
from llmos.bus.base import Delivery, QueueOptions
from llmos.errors import BusError
from tests.bus.test_kafka import Tansu
from tests.bus.test_nats import NATS_SERVER
from tests.conftest import REQUIRE_SERVICES, free_port, stop_process
from tests.e2e.test_tls import self_signed


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and (process is None or process.poll() is None)
            time.sleep(0.1)


@pytest.fixture
def nats_over_tls(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if not os.path.exists(NATS_SERVER):
        if REQUIRE_SERVICES:
            pytest.fail(f"no {NATS_SERVER}")
        pytest.skip(f"no {NATS_SERVER}")
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js"),
         "--tls", "--tlscert", str(cert), "--tlskey", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield f"nats+tls://127.0.0.1:{port}", cert
    finally:
        stop_process(process)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def kafka_over_tls(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    cert, key = self_signed(tmp_path)
    front = free_port()
    tansu = Tansu(tmp_path / "tansu.log", advertised=f"127.0.0.1:{front}")
    await asyncio.to_thread(tansu.start)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        back_reader, back_writer = await asyncio.open_connection("127.0.0.1", tansu.port)
        await asyncio.gather(_pipe(reader, back_writer), _pipe(back_reader, writer))

    proxy = await asyncio.start_server(relay, "127.0.0.1", front, ssl=context)
    try:
        yield f"kafka+ssl://127.0.0.1:{front}?partitions=1", cert
    finally:
        proxy.close()
        await asyncio.to_thread(tansu.stop)


async def round_trip(bus: Bus) -> None:
    await bus.declare_queue("llmos.test.tls", QueueOptions(durable=False))
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on(delivery: Delivery) -> None:
        await got.put(delivery.body)
        await delivery.ack()

    await bus.consume("llmos.test.tls", on, prefetch=1)
    await bus.publish("llmos.test.tls", b"over tls")
    assert await asyncio.wait_for(got.get(), 30) == b"over tls"


async def refused_then_trusted(url: str, cert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    untrusted = open_bus(url)
    with pytest.raises(BusError, match="cannot connect"):
        await untrusted.connect()  # (the self-signed certificate is trusted by nobody yet)
    await untrusted.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    bus = open_bus(url)
    await bus.connect()
    try:
        await round_trip(bus)
    finally:
        await bus.close()


@pytest.mark.asyncio
async def test_nats_over_tls(nats_over_tls: tuple[str, Path],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    await refused_then_trusted(*nats_over_tls, monkeypatch)


@pytest.mark.asyncio
async def test_kafka_over_tls(kafka_over_tls: tuple[str, Path],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    await refused_then_trusted(*kafka_over_tls, monkeypatch)
