"""Hostile and heavy inputs against a real `llmos serve`: each gets its clear error fast,
and afterwards the server answers a normal request at normal speed with no slot held.

(The issue's targets are 2 s per case and 1 s to free a slot; the bounds here are
wider, so that a slow moment in CI does not fail the suite.)
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer
from tests.waiting import wait_until

MODEL = "gemma-3-270m"
ANSWER_S = 5.0  # target: 2 s
FREE_S = 3.0  # target: 1 s


def busy_slots(server: RunningServer) -> float:
    return server.metric("llmos_worker_busy_slots", deployment=MODEL)


def wait_idle(server: RunningServer, within_s: float = FREE_S) -> float:
    """Seconds until no slot is busy (fails after ``within_s``)."""
    started = time.monotonic()
    while busy_slots(server) > 0:
        if time.monotonic() - started > within_s:
            pytest.fail(f"slots still busy after {within_s}s: {busy_slots(server)}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def still_healthy(llmos_server: RunningServer) -> Iterator[None]:
    yield
    wait_idle(llmos_server)
    started = time.monotonic()
    response = httpx.post(f"{llmos_server.api}/completions", timeout=30, json={
        "model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 5.0


def timed_post(server: RunningServer, path: str, content: bytes,
               headers: dict[str, str] | None = None) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{server.url}{path}", content=content, timeout=60,
                          headers={"content-type": "application/json", **(headers or {})})
    return response, time.monotonic() - started


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    assert len(error["message"]) < 600  # never an echo of the input
    return error


def test_a_hundred_thousand_messages(llmos_server: RunningServer) -> None:
    body = {"model": MODEL, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}] * 100_000}
    response, took = timed_post(llmos_server, "/v1/chat/completions",
                                json.dumps(body).encode())
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages" and "limits.max_messages" in error["message"]
    assert took < ANSWER_S


def test_messages_under_the_cap_that_cannot_fit_are_refused_before_tokenizing(
        llmos_server: RunningServer) -> None:
    body = {"model": MODEL, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}] * 2000}
    response, took = timed_post(llmos_server, "/v1/chat/completions",
                                json.dumps(body).encode())
    assert response.status_code == 400
    assert error_of(response)["code"] == "context_length_exceeded"
    assert took < ANSWER_S


def test_a_twenty_megabyte_prompt(llmos_server: RunningServer) -> None:
    body = b'{"model": "gemma-3-270m", "prompt": "' + b"hello " * 3_500_000 + b'"}'
    response, took = timed_post(llmos_server, "/v1/completions", body)
    assert response.status_code == 413
    assert "limits.max_body_bytes" in error_of(response)["message"]
    assert took < ANSWER_S


def test_a_megabyte_prompt_under_the_body_limit(llmos_server: RunningServer) -> None:
    body = json.dumps({"model": MODEL, "prompt": "hello " * 170_000, "max_tokens": 4})
    response, took = timed_post(llmos_server, "/v1/completions", body.encode())
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "context_length_exceeded" and "at least" in error["message"]
    assert took < ANSWER_S


def test_a_huge_logit_bias(llmos_server: RunningServer) -> None:
    bias = {str(i): 1 for i in range(300_000)}
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "logit_bias": bias}
    response, took = timed_post(llmos_server, "/v1/completions", json.dumps(body).encode())
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "logit_bias" and "limits.max_logit_bias" in error["message"]
    assert took < ANSWER_S


def test_a_cross_site_form_post(llmos_server: RunningServer) -> None:
    form = b"model=gemma-3-270m&prompt=hi"
    response, took = timed_post(llmos_server, "/v1/completions", form, headers={
        "content-type": "application/x-www-form-urlencoded", "origin": "https://evil.example"})
    assert response.status_code == 403
    no_origin, _ = timed_post(llmos_server, "/v1/completions", form, headers={
        "content-type": "text/plain"})
    assert no_origin.status_code == 415
    assert took < ANSWER_S


def test_a_rebinding_host(llmos_server: RunningServer) -> None:
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{llmos_server.url}/api/models/{MODEL}@1",
                                 headers={"host": "rebind.evil.example"}, timeout=10)
        assert response.status_code == 403
        assert error_of(response)["code"] == "forbidden"


@pytest.mark.parametrize("length", [256, 300, 1_000_000])
def test_a_long_model_name(llmos_server: RunningServer, length: int) -> None:
    name = "a" * length
    response, took = timed_post(llmos_server, "/v1/chat/completions", json.dumps({
        "model": name, "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert response.status_code in (400, 404)
    assert error_of(response)["type"] == "invalid_request_error"
    if length < 1000:
        shown = httpx.get(f"{llmos_server.url}/api/models/{name}", timeout=10)
        assert shown.status_code == 400
        assert str(llmos_server.home) not in shown.text and "/models" not in error_of(
            shown)["message"]
    assert took < ANSWER_S


def test_tag_removal_then_delete_then_gc_keeps_the_deployed_model(
        llmos_server: RunningServer) -> None:
    api = f"{llmos_server.url}/api"
    version = httpx.get(f"{api}/models/{MODEL}", timeout=10).json()
    assert httpx.delete(f"{api}/models/{MODEL}/tags/latest", timeout=10).status_code == 200
    try:
        refused = httpx.delete(f"{api}/models/{version['ref']}", timeout=10)
        assert refused.status_code == 409
        assert "deployment" in error_of(refused)["message"]
        gc = httpx.post(f"{api}/registry/gc", params={"grace_s": 0}, timeout=60)
        assert gc.status_code == 200
        for blob in version["blobs"]:
            assert httpx.head(f"{api}/blobs/{blob['digest']}", timeout=10).status_code == 200
        log = (llmos_server.home / "logs" / "llmos.log").read_text()
        assert "registry: removed tag latest" in log and "refused to delete" in log
    finally:
        httpx.put(f"{api}/models/{version['ref']}/tags/latest", timeout=10)


def _open_request(server: RunningServer, path: str, body: dict[str, Any]) -> socket.socket:
    """A request sent on a raw socket, left waiting for its answer."""
    host, port = server.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
                 .encode() + data)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_during_prefill_frees_its_slot(
        llmos_server: RunningServer, stream: bool) -> None:
    # A prompt that nearly fills the 256-token slot, so its prefill takes a while.
    prompt = " ".join(f"w{i}" for i in range(60))
    socks = [_open_request(llmos_server, "/v1/completions", {
        "model": MODEL, "prompt": f"{i} {prompt}", "max_tokens": 16, "stream": stream,
        "ignore_eos": True}) for i in range(4)]
    wait_until(lambda: busy_slots(llmos_server) >= 1, 10, 0.01,
               what="the requests reaching the engine")
    for sock in socks:
        sock.close()
    took = wait_idle(llmos_server)
    assert took < FREE_S
