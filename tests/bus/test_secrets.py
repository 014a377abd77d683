"""A bus URL's password never reaches an error message (nor, through it, a log)."""

from __future__ import annotations

import pytest

from llmos.bus import open_bus
from llmos.bus.base import safe_url
from llmos.errors import LLMOSError
from tests.conftest import free_port

SECRET = "hunter2-s3cret"


def test_safe_url_hides_the_password_only() -> None:
    assert safe_url(f"amqp://guest:{SECRET}@host:5672/vh") == "amqp://guest:***@host:5672/vh"
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["amqp", "redis", "rediss", "nats", "kafka"])
async def test_a_failed_connection_names_the_server_not_the_password(scheme: str) -> None:
    port = free_port()  # nothing listens there
    url = f"{scheme}://user:{SECRET}@127.0.0.1:{port}/"
    with pytest.raises(LLMOSError) as info:
        await open_bus(url).connect()  # (Kafka refuses credentials when it is built)
    assert SECRET not in info.value.message and SECRET not in str(info.value)
    assert "127.0.0.1" in info.value.message
    if scheme != "kafka":
        with pytest.raises(LLMOSError) as not_connected:
            await open_bus(url).declare_queue("q")
        assert SECRET not in not_connected.value.message
