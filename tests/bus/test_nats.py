"""The bus contract against the real NATS server with JetStream on this machine."""

from __future__ import annotations

import asyncio
import os
import shutil
from urllib.parse import urlsplit

import pytest

from llmos.bus import Bus
from tests.bus.contract import BusContract
from tests.bus.test_rabbitmq import shut_sockets_to
from tests.conftest import REQUIRE_SERVICES, require_service

NATS_URL = os.environ.get("LLMOS_TEST_NATS_URL", "nats://127.0.0.1:4222")
NATS_SERVER = "/usr/sbin/nats-server"
# The command line .ci/run starts NATS with.
NATS_ARGS = ["-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server",
             "-l", "/var/log/nats-server.log"]


def reset_nats_queues(deployment: str) -> None:
    """Forget a deployment's queues left by an earlier run (their waiting requests too)."""
    from llmos.bus import names
    from llmos.bus.nats_jetstream import NatsBus

    async def delete() -> None:
        bus = NatsBus(NATS_URL)
        await bus.connect()
        for tier in names.TIERS:
            await bus.delete_queue(names.infer_queue(deployment, tier))
        await bus.delete_queue(names.dead_letter_queue(deployment))
        await bus.close()

    asyncio.run(delete())


async def _run(*argv: str) -> int:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await process.wait()


class TestNatsBus(BusContract):
    # An AckWait below the long-hold case's 3 s shows in_progress renewals keep it.
    url = f"{NATS_URL}?ack_wait_s=1.5"

    async def cut_connection(self, bus: Bus) -> None:
        parts = urlsplit(NATS_URL)
        assert shut_sockets_to(parts.hostname or "127.0.0.1", parts.port or 4222) >= 1

    async def restart_broker(self) -> None:
        """Stop and start nats-server as .ci/run starts it (JetStream's store on disk)."""
        if not os.path.exists(NATS_SERVER) or shutil.which("start-stop-daemon") is None \
                or os.geteuid() != 0:
            message = "restarting NATS needs nats-server, start-stop-daemon and root"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        await _run("start-stop-daemon", "--stop", "--oknodo", "--retry", "10",
                   "--exec", NATS_SERVER)
        assert await _run("start-stop-daemon", "--start", "--oknodo", "--background",
                          "--exec", NATS_SERVER, "--", *NATS_ARGS) == 0
        parts = urlsplit(NATS_URL)
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection(parts.hostname, parts.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        pytest.fail("NATS did not come back")

    @pytest.fixture(autouse=True)
    def _broker(self) -> None:
        parts = urlsplit(NATS_URL)
        require_service("NATS", parts.hostname or "127.0.0.1", parts.port or 4222)
