"""`llmos serve --bus amqp://… --workers 2`: two gateway processes on one address, each
with its own reply queue; every request's answer reaches the process holding its client."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from llmos.bus import names
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.conftest import RunningServer, require_service, start_server, stop_server
from tests.waiting import wait_until

MODEL = "gemma-3-270m"


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    reset_queue(names.infer_queue(MODEL))
    server = start_server(tmp_path_factory.mktemp("llmos-workers"),
                          extra_env={"LLMOS_ENGINE__SLOTS": "2",
                                     "LLMOS_ENGINE__CTX_SIZE": "512"},
                          args=["--bus", AMQP_URL, "--workers", "2"])
    try:
        yield server
    finally:
        stop_server(server)


def gateway_of(client: httpx.Client) -> str:
    gateway = client.get("/readyz").json()["gateway"]
    assert isinstance(gateway, str)
    return gateway


def test_each_gateway_process_answers_its_own_clients(two_gateways: RunningServer) -> None:
    streamed: dict[str, str] = {}

    def one_more() -> bool:
        # A new connection: the kernel gives it to either process. The same connection
        # then carries a streamed completion, which that process must get back from the
        # worker through its own reply queue.
        with httpx.Client(base_url=two_gateways.url, timeout=60) as client:
            gateway = gateway_of(client)
            text = ""
            with client.stream("POST", "/v1/completions", json={
                    "model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 6,
                    "temperature": 0, "stream": True}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
            assert gateway_of(client) == gateway  # (still the same process)
            streamed[gateway] = text
        return len(streamed) == 2

    wait_until(one_more, timeout_s=60, interval_s=0, what="a stream through each process")
    assert all("4" in text for text in streamed.values()), streamed


def test_a_killed_gateway_process_is_replaced(two_gateways: RunningServer) -> None:
    parent = two_gateways.process.pid
    [sibling] = wait_until(lambda: children(parent), what="the second gateway process")
    os.kill(sibling, signal.SIGKILL)
    replaced = wait_until(lambda: children(parent) - {sibling}, timeout_s=30,
                          what="a new gateway process")
    seen: set[str] = set()

    def both_answer() -> bool:
        with httpx.Client(base_url=two_gateways.url, timeout=10) as client:
            seen.add(gateway_of(client))
        return len(seen) >= 2

    wait_until(both_answer, timeout_s=60, interval_s=0.05, what="both processes answering")
    assert replaced


def test_several_gateway_processes_need_a_networked_bus(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="needs a networked bus"):
        start_server(tmp_path, extra_env={"LLMOS_DEFAULT_MODEL": ""}, args=["--workers", "2"],
                     ready_path="/api/models")
