"""`llmos serve --bus amqp://…`: the same API, with every request going through RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from llmos.bus import names
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.conftest import RunningServer, require_service, start_server, stop_server

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def amqp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    reset_queue(names.infer_queue(MODEL))
    server = start_server(tmp_path_factory.mktemp("llmos-amqp"),
                          extra_env={"LLMOS_ENGINE__SLOTS": "4", "LLMOS_ENGINE__CTX_SIZE": "1024"},
                          args=["--bus", AMQP_URL])
    try:
        yield server
    finally:
        stop_server(server)


def test_chat_and_stream_through_rabbitmq(amqp_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=amqp_server.api, api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert answer.choices[0].message.content
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8
    parts = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=8, temperature=0, stream=True) if c.choices]
    assert "4" in "".join(parts)


def test_concurrent_requests_through_rabbitmq(amqp_server: RunningServer) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=amqp_server.api, api_key="unused",
                                    max_retries=0)
        answers = await asyncio.gather(*[
            client.completions.create(model=MODEL, prompt=f"{i}, {i + 1},", max_tokens=8,
                                      temperature=0) for i in range(8)])
        await client.close()
        return [a.choices[0].text for a in answers]

    assert all(asyncio.run(run()))


def test_disconnect_frees_the_slot_through_rabbitmq(amqp_server: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{amqp_server.api}/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    started = time.monotonic()
    while amqp_server.metric("llmos_worker_busy_slots") > 0:
        assert time.monotonic() - started < 3, "the slot was not freed"
        time.sleep(0.05)
