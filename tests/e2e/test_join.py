"""Join tokens: a worker presents one to its control plane before it takes requests.

A revoked or forged token is refused (logged and audited by the control plane) and the
worker exits before it consumes anything; a live token lets it join and serve, and
revoking it drains and stops the worker within seconds.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from llmos.bus import names
from llmos.bus.permissions import node_permissions
from tests.bus.test_rabbitmq import AMQP_URL, reset_queue
from tests.bus.test_rabbitmq_permissions import node_user
from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, require_service, start_server, stop_server
from tests.e2e.test_worker_failover import WORKER_ENV, stop_worker

MODEL = "gemma-3-270m"


@dataclass
class Control:
    server: RunningServer
    admin: dict[str, str]


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    reset_queue(names.infer_queue(MODEL))
    home = tmp_path_factory.mktemp("control")
    server = start_server(home, args=["--init-admin-key", "--bus", AMQP_URL, "--no-worker"],
                          ready_path="/healthz")
    try:
        token = (home / "admin.key").read_text().strip()
        yield Control(server, {"Authorization": f"Bearer {token}"})
    finally:
        stop_server(server)


def node_token(control: Control, name: str) -> tuple[str, str]:
    made = httpx.post(f"{control.server.url}/api/keys", headers=control.admin,
                      json={"name": name, "role": "node"}, timeout=10)
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def revoke(control: Control, key_id: str) -> None:
    response = httpx.delete(f"{control.server.url}/api/keys/{key_id}", headers=control.admin,
                            timeout=10)
    assert response.status_code in (200, 204), response.text


def worker(control: Control, home: Path, token: str, bus: str = AMQP_URL
           ) -> tuple[subprocess.Popen[bytes], Path]:
    home.mkdir(parents=True, exist_ok=True)
    log = home / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos", "worker", "--bus", bus,
             "--control", control.server.url],
            env=os.environ | WORKER_ENV | {"LLMOS_HOME": str(home), "LLMOS_JOIN_TOKEN": token},
            stdout=out, stderr=subprocess.STDOUT)
    return process, log


def test_a_worker_with_a_revoked_or_forged_token_takes_no_request(
        control: Control, tmp_path: Path) -> None:
    key_id, token = node_token(control, "node-revoked")
    revoke(control, key_id)
    forged = f"llmos-{key_id}.{'A' * 43}"
    for name, presented, why in (("revoked", token, "has been revoked"),
                                 ("forged", forged, "not one this server issued")):
        process, log = worker(control, tmp_path / name, presented)
        try:
            assert process.wait(timeout=60) == 2
        finally:
            stop_worker(process)
        said = " ".join(log.read_text().split())
        assert "refused this node's join token" in said and why in said, said
        assert "consuming" not in said and presented not in said
    refusals = control.server.log.read_text()
    assert refusals.count("refused a request to /api/nodes/join") >= 2
    refused = httpx.get(f"{control.server.url}/api/audit", headers=control.admin,
                        params={"failed": "true", "key_id": key_id}, timeout=10).json()["data"]
    assert [(e["path"], e["status"]) for e in refused].count(("/api/nodes/join", 401)) == 2


def test_a_joined_worker_serves_until_its_token_is_revoked(
        control: Control, tmp_path: Path) -> None:
    key_id, token = node_token(control, "node-live")
    # It runs as its own broker user, with the least-privilege patterns for its
    # deployment: they are all a worker needs.
    with node_user([MODEL]) as bus:
        process, log = worker(control, tmp_path, token, bus)
        try:
            serve_until_revoked(control, process, log, key_id)
        finally:
            stop_worker(process)


def serve_until_revoked(control: Control, process: subprocess.Popen[bytes], log: Path,
                        key_id: str) -> None:
    """It joins and serves; revoking its token drains and stops it within seconds."""
    deadline = time.monotonic() + 120
    while "consuming" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    with openai.OpenAI(base_url=control.server.api, max_retries=0, timeout=60,
                       api_key=control.admin["Authorization"].removeprefix("Bearer ")
                       ) as client:
        answer = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4)
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    events = httpx.get(f"{control.server.url}/api/events", headers=control.admin,
                       timeout=10).json()["data"]
    assert any(e["kind"] == "join" and key_id in e["message"] for e in events), events
    revoked_at = time.monotonic()
    revoke(control, key_id)
    assert process.wait(timeout=60) == 2
    # (presented every 5 s; then a drain of nothing in flight)
    assert time.monotonic() - revoked_at < 30
    said = " ".join(log.read_text().split())
    assert "this node stops taking requests" in said, said


def test_the_cli_prints_a_nodes_least_privilege_broker_grant(control: Control) -> None:
    admin = control.admin["Authorization"].removeprefix("Bearer ")
    printed = llmos("nodes", "bus-permissions", "node-a", "--deployment", MODEL,
                    "--url", control.server.url, env={"LLMOS_API_KEY": admin})
    assert printed.returncode == 0, printed.stderr
    assert shlex.split(printed.stdout) == node_permissions([MODEL]).rabbitmqctl("node-a")
    refused = llmos("nodes", "bus-permissions", "node-a", "--deployment", "No Such!",
                    "--url", control.server.url, env={"LLMOS_API_KEY": admin})
    assert refused.returncode != 0 and "deployment" in refused.stderr


def agent(control: Control, home: Path, name: str, token: str
          ) -> tuple[subprocess.Popen[bytes], Path]:
    home.mkdir(parents=True, exist_ok=True)
    log = home / "agent.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos", "agent", "--bus", AMQP_URL, "--name", name,
             "--control", control.server.url, "--cpus", "1", "--memory", "1GiB"],
            env=os.environ | {"LLMOS_HOME": str(home), "LLMOS_JOIN_TOKEN": token},
            stdout=out, stderr=subprocess.STDOUT)
    return process, log


def test_an_agent_joins_and_leaves_with_its_token(control: Control, tmp_path: Path) -> None:
    key_id, token = node_token(control, "agent-node")
    revoke(control, key_id)
    process, log = agent(control, tmp_path / "refused", "join-refused", token)
    try:
        assert process.wait(timeout=60) == 2
    finally:
        stop_worker(process)
    assert "has been revoked" in " ".join(log.read_text().split())
    nodes = httpx.get(f"{control.server.url}/api/nodes", headers=control.admin,
                      timeout=10).json()["data"]
    assert "join-refused" not in {n["name"] for n in nodes}

    key_id, token = node_token(control, "agent-node-2")
    process, log = agent(control, tmp_path / "joined", "join-ok", token)
    try:
        deadline = time.monotonic() + 60
        while "join-ok" not in {n["name"] for n in httpx.get(
                f"{control.server.url}/api/nodes", headers=control.admin,
                timeout=10).json()["data"]}:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # It heeds the cluster it joined (the one the control plane's store made).
        cluster = httpx.post(f"{control.server.url}/api/nodes/join",
                             json={"name": "join-ok", "kind": "agent"},
                             headers={"Authorization": f"Bearer {token}"},
                             timeout=10).json()["cluster"]
        assert f"heeding cluster {cluster}" in " ".join(log.read_text().split())
        revoke(control, key_id)
        assert process.wait(timeout=60) == 2
        assert "this node stops taking requests" in " ".join(log.read_text().split())
    finally:
        stop_worker(process)
