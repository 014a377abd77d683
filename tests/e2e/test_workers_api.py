"""The workers management API and CLI of a real `llmos serve`: heartbeats, drain, resume."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.cli.test_cli import llmos
from tests.conftest import RunningServer
from tests.waiting import wait_until


def workers(server: RunningServer) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/workers", timeout=5)
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def wait_for_state(server: RunningServer, worker_id: str, state: str) -> None:
    wait_until(lambda: any(w["id"] == worker_id and w["state"] == state
                           for w in workers(server)), 10, 0.05,
               what=f"worker {worker_id} {state}")


def test_the_embedded_worker_is_listed(llmos_server: RunningServer) -> None:
    [worker] = workers(llmos_server)
    assert worker["deployment"] == "gemma-3-270m"
    assert worker["slots"] == 16
    assert worker["state"] == "serving"
    assert time.time() - worker["last_heartbeat"] < 11  # two intervals of 5 s, and slack
    assert worker["pid"] == llmos_server.process.pid  # (embedded: the server's process)
    assert worker["version"] and 0 < worker["started_at"] <= time.time()
    assert worker["engine"]["slots"] == 16 and worker["engine"]["model_file"].endswith(".gguf")


def test_a_drained_sole_worker_fails_requests_fast_until_resume(
        llmos_server: RunningServer) -> None:
    [worker] = workers(llmos_server)
    response = httpx.post(f"{llmos_server.url}/api/workers/{worker['id']}/drain", timeout=5)
    assert response.status_code == 202
    try:
        wait_for_state(llmos_server, worker["id"], "drained")  # (idle: nothing to finish)
        started = time.monotonic()
        with openai.OpenAI(base_url=llmos_server.api, api_key="unused", max_retries=0,
                           timeout=30) as client, pytest.raises(openai.APIStatusError) as info:
            client.completions.create(model="gemma-3-270m", prompt="hi", max_tokens=2)
        took = time.monotonic() - started
        assert info.value.status_code == 503
        assert info.value.response.headers["retry-after"] == "5"
        assert info.value.response.json()["error"]["code"] == "no_replica"
        assert took < 3.0 + 2.0  # limits.no_replica_wait_s, and slack
        ready = httpx.get(f"{llmos_server.url}/readyz", timeout=5)
        assert ready.status_code == 503
        assert "drained" in ready.json()["detail"]
    finally:
        response = httpx.post(f"{llmos_server.url}/api/workers/{worker['id']}/resume",
                              timeout=5)
    assert response.status_code == 202
    wait_for_state(llmos_server, worker["id"], "serving")
    assert httpx.get(f"{llmos_server.url}/readyz", timeout=5).status_code == 200
    with openai.OpenAI(base_url=llmos_server.api, api_key="unused", max_retries=0,
                       timeout=30) as client:
        answer = client.completions.create(model="gemma-3-270m", prompt="hi", max_tokens=2)
    assert answer.choices[0].text is not None


def test_an_unknown_worker_is_404(llmos_server: RunningServer) -> None:
    response = httpx.post(f"{llmos_server.url}/api/workers/nobody/drain", timeout=5)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "worker_not_found"
    assert "live workers:" in error["message"]


def test_cli_lists_drains_and_resumes(llmos_server: RunningServer) -> None:
    [worker] = workers(llmos_server)
    listed = llmos("workers", "ls", "--url", llmos_server.url)
    assert listed.returncode == 0, listed.stderr
    assert worker["id"] in listed.stdout and "serving" in listed.stdout
    prefix = worker["id"][:5]  # ids may be abbreviated
    drained = llmos("workers", "drain", prefix, "--wait", "--url", llmos_server.url)
    assert drained.returncode == 0, drained.stderr
    assert f"{worker['id']} drained" in drained.stdout
    shown = llmos("workers", "show", prefix, "--url", llmos_server.url)
    assert shown.returncode == 0 and "drained" in shown.stdout and "slots" in shown.stdout
    resumed = llmos("workers", "resume", prefix, "--url", llmos_server.url)
    assert resumed.returncode == 0, resumed.stderr
    wait_for_state(llmos_server, worker["id"], "serving")
    missing = llmos("workers", "drain", "nobody", "--url", llmos_server.url)
    assert missing.returncode == 1
    assert "no live worker" in missing.stderr


