"""`llmos serve --bus amqp://…`: the same API, with every request going through RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from llmos.bus import names
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.conftest import RunningServer, require_service, start_server, stop_server
from tests.waiting import wait_until

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
    wait_until(lambda: amqp_server.metric("llmos_worker_busy_slots") == 0, 3, 0.05,
               what="the slot freed")


def test_a_request_has_a_log_line_at_the_gateway_and_at_the_worker(
        amqp_server: RunningServer) -> None:
    request_id = f"find-me-{time.monotonic_ns()}"
    response = httpx.post(f"{amqp_server.api}/completions", timeout=30,
                          headers={"x-request-id": request_id},
                          json={"model": MODEL, "prompt": "1, 2,", "max_tokens": 3})
    assert response.status_code == 200
    refused = httpx.post(f"{amqp_server.api}/completions", timeout=30,
                         headers={"x-request-id": f"{request_id}-bad"},
                         json={"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert refused.status_code == 400
    log_file = amqp_server.home / "logs" / "llmos.log"

    def lines() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for line in log_file.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("event") == "request" and str(entry.get("request_id", "")
                                                       ).startswith(request_id):
                found.setdefault(entry["request_id"], []).append(entry)
        return found

    found = wait_until(lambda: (lambda f: f if len(f.get(request_id, [])) == 2
                                and f.get(f"{request_id}-bad") else None)(lines()), 10,
                       what="the request's log lines")
    assert isinstance(found, dict)
    by_logger = {e["logger"]: e for e in found[request_id]}
    gateway, worker = by_logger["llmos.gateway.requests"], by_logger["llmos.worker.worker"]
    assert (gateway["status"], gateway["deployment"], gateway["completion_tokens"]) == (
        200, MODEL, 3)
    assert gateway["duration_s"] >= gateway["first_byte_s"] > 0
    assert (worker["outcome"], worker["completion_tokens"]) == ("ok", 3)
    assert worker["worker"] and worker["queue_wait_s"] is not None
    [bad] = found[f"{request_id}-bad"]  # a 400 has its line too
    assert bad["status"] == 400
