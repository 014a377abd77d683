"""The bus contract against the real Redis on this machine (Streams and pub/sub)."""

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

REDIS_URL = os.environ.get("LLMOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def reset_redis_queues(deployment: str) -> None:
    """Forget a deployment's queues left by an earlier run (their waiting requests too)."""
    from llmos.bus import names
    from llmos.bus.redis_streams import RedisBus

    async def delete() -> None:
        bus = RedisBus(REDIS_URL)
        await bus.connect()
        for tier in names.TIERS:
            await bus.delete_queue(names.infer_queue(deployment, tier))
        await bus.delete_queue(names.dead_letter_queue(deployment))
        await bus.close()

    asyncio.run(delete())


class TestRedisBus(BusContract):
    url = REDIS_URL
    reconnect_is_silent = True

    async def cut_connection(self, bus: Bus) -> None:
        parts = urlsplit(REDIS_URL)
        assert shut_sockets_to(parts.hostname or "127.0.0.1", parts.port or 6379) >= 1

    async def restart_broker(self) -> None:
        """Save, stop and start the Redis server (as .ci/run starts it), on this machine."""
        if shutil.which("redis-server") is None or os.geteuid() != 0:
            message = "restarting Redis needs redis-server and root"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        cli = await asyncio.create_subprocess_exec(
            "redis-cli", "-p", "6379", "shutdown", "save",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await cli.wait()
        await asyncio.sleep(0.5)
        server = await asyncio.create_subprocess_exec(
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
            "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
            "--logfile", "/var/log/redis/ci.log")
        assert await server.wait() == 0
        for _ in range(100):
            ping = await asyncio.create_subprocess_exec(
                "redis-cli", "-p", "6379", "ping", stdout=asyncio.subprocess.PIPE)
            out, _ = await ping.communicate()
            if out.strip() == b"PONG":
                return
            await asyncio.sleep(0.1)
        pytest.fail("Redis did not come back")

    @pytest.fixture(autouse=True)
    def _broker(self) -> None:
        parts = urlsplit(REDIS_URL)
        require_service("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)


@pytest.mark.asyncio
async def test_closing_the_bus_ends_its_topic_subscriptions() -> None:
    """A subscription left running when the pool goes away outlived every cancel (it
    hung asyncio.run's last one in CI): close ends it first."""
    parts = urlsplit(REDIS_URL)
    require_service("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    from llmos.bus.redis_streams import RedisBus

    for _ in range(5):
        bus = RedisBus(REDIS_URL)
        await bus.connect()

        async def heard(message: object) -> None:
            return None

        subscription = await bus.subscribe("llmos.test.closing", heard)
        task = subscription._task  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)
        await asyncio.wait_for(bus.close(), 10)
        assert task is not None and task.done()
