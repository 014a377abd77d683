"""A gateway and a separate `llmos worker` process on RabbitMQ: one request's log lines
are found by its id (`llmos logs -r`), and `/readyz`, `/v1/models` and `llmos workers
ls` name the same worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from llmos.bus import names
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, require_service, start_server, stop_server
from tests.e2e.test_worker_failover import start_worker, stop_worker, worker_id
from tests.waiting import wait_until

MODEL = "gemma-3-270m"


@dataclass
class Split:
    server: RunningServer
    worker_id: str
    worker_log: Path


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    reset_queue(names.infer_queue(MODEL))
    home = tmp_path_factory.mktemp("split")
    worker, log = start_worker(home, "worker")
    server = None
    try:
        server = start_server(home, args=["--bus", AMQP_URL, "--no-worker"])
        yield Split(server, worker_id(log), log)
    finally:
        if server is not None:
            stop_server(server)
        stop_worker(worker)


def test_readyz_models_and_workers_agree(split: Split) -> None:
    ready = httpx.get(f"{split.server.url}/readyz", timeout=5).json()
    assert ready["status"] == "ready"
    assert ready["served"] == {MODEL: [split.worker_id]}
    models = httpx.get(f"{split.server.api}/models", timeout=5).json()["data"]
    assert [m["id"] for m in models] == list(ready["served"])
    listed = llmos("workers", "ls", "-q", "--url", split.server.url)
    assert listed.stdout.split() == [split.worker_id]


def test_one_request_is_found_by_its_id_at_the_gateway_and_the_worker(split: Split) -> None:
    request_id = f"find-me-{time.monotonic_ns()}"
    response = httpx.post(f"{split.server.api}/completions", timeout=30,
                          headers={"x-request-id": request_id},
                          json={"model": MODEL, "prompt": "1, 2,", "max_tokens": 3})
    assert response.status_code == 200

    def found() -> list[dict[str, Any]] | None:
        result = llmos("logs", "-r", request_id, "-o", "json", "--url", split.server.url)
        lines: list[dict[str, Any]] = json.loads(result.stdout)
        return lines if len(lines) >= 2 else None

    lines = wait_until(found, 15, 0.5, what="the request's lines at the gateway")
    assert isinstance(lines, list)
    assert {line["request_id"] for line in lines} == {request_id}
    by_logger = {line["logger"]: line for line in lines}
    gateway, worker = by_logger["llmos.gateway.requests"], by_logger["llmos.fleet"]
    assert (gateway["status"], gateway["deployment"], gateway["completion_tokens"]) == (
        200, MODEL, 3)
    # the worker's line came over the bus from the other process, with its fields
    assert (worker["worker"], worker["outcome"], worker["completion_tokens"]) == (
        split.worker_id, "ok", 3)
    assert worker["queue_wait_s"] is not None and worker["first_token_s"] is not None
    # ... and the worker process wrote the same line in its own log
    own = [json.loads(line) for line in split.worker_log.read_text().splitlines()
           if request_id in line]
    assert [(e["logger"], e["outcome"]) for e in own] == [("llmos.worker.worker", "ok")]
    # for people: one line each, with the id and the fields
    text = llmos("logs", "-r", request_id, "--url", split.server.url).stdout.splitlines()
    assert len(text) == 2 and all(f"request_id={request_id}" in t for t in text)
    assert any("llmos.fleet" in t and f"worker={split.worker_id}" in t for t in text)


def test_no_line_matches_an_unknown_id(split: Split) -> None:
    result = llmos("logs", "-r", "no-such-request", "--url", split.server.url)
    assert result.returncode == 1 and "no log lines match" in result.stderr
