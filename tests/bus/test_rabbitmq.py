"""The bus contract against the real RabbitMQ on this machine."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from tests.bus.contract import BusContract
from tests.conftest import require_service

AMQP_URL = os.environ.get("LLMOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def reset_queue(name: str) -> None:
    """Delete a queue left by an earlier run (its arguments may predate this code)."""
    import asyncio

    from llmos.bus.rabbitmq import RabbitMQBus

    async def delete() -> None:
        bus = RabbitMQBus(AMQP_URL)
        await bus.connect()
        await bus.delete_queue(name)
        await bus.close()

    asyncio.run(delete())


class TestRabbitMQBus(BusContract):
    url = AMQP_URL

    @pytest.fixture(autouse=True)
    def _broker(self) -> None:
        parts = urlsplit(AMQP_URL)
        require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
