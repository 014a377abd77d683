"""The bus contract against the real RabbitMQ on this machine."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

from llmos.bus import Bus
from tests.bus.contract import BusContract
from tests.conftest import REQUIRE_SERVICES, require_service

AMQP_URL = os.environ.get("LLMOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def reset_queue(name: str) -> None:
    """Delete a queue left by an earlier run (its arguments may predate this code)."""
    from llmos.bus.rabbitmq import RabbitMQBus

    async def delete() -> None:
        bus = RabbitMQBus(AMQP_URL)
        await bus.connect()
        await bus.delete_queue(name)
        await bus.close()

    asyncio.run(delete())


def shut_sockets_to(host: str, port: int) -> int:
    """Shut down this process's TCP connections to host:port, as a dying network would."""
    shut = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] == (host, port):
                sock.shutdown(socket.SHUT_RDWR)
                shut += 1
        except OSError:
            pass
        finally:
            sock.close()
    return shut


class TestRabbitMQBus(BusContract):
    url = AMQP_URL

    async def cut_connection(self, bus: Bus) -> None:
        parts = urlsplit(AMQP_URL)
        assert shut_sockets_to(parts.hostname or "127.0.0.1", parts.port or 5672) >= 1

    async def restart_broker(self) -> None:
        """Restart the RabbitMQ application on its node (the node's Erlang VM stays up)."""
        if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
            message = "restarting RabbitMQ needs rabbitmqctl and root"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        for action in ("stop_app", "start_app"):
            process = await asyncio.create_subprocess_exec(
                "rabbitmqctl", action, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            _, stderr = await asyncio.wait_for(process.communicate(), 120)
            assert process.returncode == 0, stderr.decode()
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "await_startup", stdout=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(process.wait(), 120)

    @pytest.fixture(autouse=True)
    def _broker(self) -> None:
        parts = urlsplit(AMQP_URL)
        require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
