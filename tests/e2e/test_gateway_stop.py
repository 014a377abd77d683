"""Stopping `llmos serve --workers 3` stops every gateway process.

A module of its own: its server has a control plane of its own (another store), and it
must not share the bus with another server's (``test_gateway_workers``'s module
fixture). Two controllers on one bus each tell every node they hear from what to run,
and the agents obey both: here, the fixture's controller had this server's agent load
the fixture's model, and stopping it then waited on that load past the test's 20 s."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from tests.bus.test_rabbitmq import AMQP_URL
from tests.conftest import require_service, start_server, stop_server
from tests.e2e.test_gateway_workers import alive, children
from tests.waiting import wait_until


def test_stopping_the_server_stops_every_gateway_process(
        tmp_path: Path) -> None:
    parts = urlsplit(AMQP_URL)
    require_service("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)
    server = start_server(tmp_path, extra_env={"LLMOS_DEFAULT_MODEL": ""},
                          args=["--bus", AMQP_URL, "--workers", "3"], ready_path="/api/models")
    siblings = wait_until(lambda: len(children(server.process.pid)) == 2
                          and children(server.process.pid), what="two more processes")
    assert isinstance(siblings, set)
    stop_server(server)
    assert server.process.returncode == 0
    wait_until(lambda: not any(alive(pid) for pid in siblings), timeout_s=15,
               what="the extra gateway processes gone")
