"""Deployments on the embedded node of ``llmos serve``: the same controller, scheduler
and agent as a cluster, with replicas in the server's process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, start_server, stop_server
from tests.e2e import load
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

SMALL = {"slots": 2, "ctx_size": 512, "threads": 1, "cache_ram_mib": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(tmp_path_factory.mktemp("deployments"),
                     extra_env={"LLMOS_ENGINE__SLOTS": "2", "LLMOS_ENGINE__CTX_SIZE": "512",
                                "LLMOS_ENGINE__THREADS": "1"})
    try:
        yield s
    finally:
        stop_server(s)


def api(server: RunningServer, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", timeout=30, **kw)


def deployment(server: RunningServer, name: str) -> dict[str, Any]:
    response = api(server, "GET", f"/api/deployments/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ready(server: RunningServer, name: str, count: int, generation: int | None = None
          ) -> Any:
    def check() -> bool:
        d = deployment(server, name)
        placed = [r for r in d["placed"] if r["state"] == "ready"
                  and (generation is None or r["generation"] == generation)]
        return len(placed) == count and len(d["placed"]) == count
    return wait_until(check, 90, what=f"{count} ready replicas of {name}")


def ask(server: RunningServer, model: str) -> str:
    return load.ask(server.api, model, timeout=60)


def test_deploy_scale_ask_and_remove(server: RunningServer) -> None:
    created = api(server, "POST", "/api/deployments", json={
        "name": "small", "model": "gemma-3-270m", "replicas": 1, "settings": SMALL,
        "aliases": ["tiny-chat"]})
    assert created.status_code == 201, created.text
    assert created.json()["model_version"] == "gemma-3-270m@1"
    again = api(server, "POST", "/api/deployments", json={"name": "small",
                                                          "model": "gemma-3-270m"})
    assert again.status_code == 409
    ready(server, "small", 1)
    with OpenAI(base_url=server.api, api_key="none") as client:
        ids = {m.id for m in client.models.list()}
    assert {"gemma-3-270m", "small", "tiny-chat"} <= ids
    assert ask(server, "small") and ask(server, "tiny-chat")  # an alias, the same replicas
    taken = api(server, "POST", "/api/deployments", json={
        "name": "other", "model": "gemma-3-270m", "aliases": ["small"]})
    assert taken.status_code == 409 and "deployment 'small'" in taken.text

    assert api(server, "PATCH", "/api/deployments/small",
               json={"replicas": 2}).status_code == 200
    ready(server, "small", 2)
    d = deployment(server, "small")
    assert d["generation"] == 1  # scaling replaces nothing
    kinds = [e["kind"] for e in d["events"]]
    assert kinds.count("scheduled") >= 2 and "ready" in kinds

    assert api(server, "DELETE", "/api/deployments/small").status_code == 204
    assert api(server, "GET", "/api/deployments/small").status_code == 404
    wait_until(lambda: not any(
        r["deployment"] == "small" for n in api(server, "GET", "/api/nodes").json()["data"]
        for r in api(server, "GET", f"/api/nodes/{n['name']}").json()["replicas"]),
        30, what="the replicas of small stopped")
    stopped = api(server, "GET", "/api/events", params={"deployment": "small"}).json()["data"]
    assert any("deployment deleted" in e["message"] for e in stopped)


def test_a_deployment_that_cannot_fit_says_why(server: RunningServer) -> None:
    created = api(server, "POST", "/api/deployments", json={
        "name": "huge", "model": "gemma-3-270m", "resources": {"memory": 2**40},
        "settings": SMALL})
    assert created.status_code == 201, created.text
    message = wait_until(lambda: deployment(server, "huge")["message"], 20,
                         what="an unschedulable message")
    assert "0/1 nodes fit: 1 insufficient memory" in str(message)
    assert "needs 1024.0 GiB memory" in str(message)
    events = api(server, "GET", "/api/events", params={"deployment": "huge"}).json()["data"]
    assert any(e["kind"] == "unschedulable" for e in events)
    with pytest.raises(Exception) as caught:
        ask(server, "huge")
    assert "huge" in str(caught.value)
    assert api(server, "DELETE", "/api/deployments/huge").status_code == 204


def test_an_unknown_chat_template_is_refused_at_deploy_time(server: RunningServer) -> None:
    refused = api(server, "POST", "/api/deployments", json={
        "name": "odd", "model": "gemma-3-270m", "settings": {"chat_template": "gemma4"}})
    assert refused.status_code == 400, refused.text
    assert "neither a built-in template (chatml, gemma)" in refused.json()["error"]["message"]
    assert api(server, "GET", "/api/deployments/odd").status_code == 404


def test_a_settings_change_rolls_replicas_with_no_failed_request(
        server: RunningServer) -> None:
    api(server, "POST", "/api/deployments", json={
        "name": "rolling", "model": "gemma-3-270m", "replicas": 1, "settings": SMALL})
    ready(server, "rolling", 1)
    before = {r["id"] for r in deployment(server, "rolling")["placed"]}
    with load.steady_load(server.api, "rolling", clients=3) as traffic:
        changed = api(server, "PATCH", "/api/deployments/rolling",
                      json={"settings": {**SMALL, "slots": 3}})
        assert changed.status_code == 200 and changed.json()["generation"] == 2
        ready(server, "rolling", 1, generation=2)
    after = {r["id"] for r in deployment(server, "rolling")["placed"]}
    assert not before & after
    assert traffic.failures == []
    assert traffic.answered > 0
    api(server, "DELETE", "/api/deployments/rolling")


def test_a_new_version_and_a_resize_roll_under_load(server: RunningServer) -> None:
    v1 = api(server, "GET", "/api/models/gemma-3-270m@1").json()
    # a version of the same weights under another name (the same content under the
    # same name would be the same version)
    v2 = api(server, "POST", "/api/models/gemma-next/versions", json={
        "files": [{"filename": b["filename"], "digest": b["digest"]} for b in v1["blobs"]],
        "tag": "next", "derived_from": "gemma-3-270m@1", "relation": "derived"})
    assert v2.status_code == 201, v2.text
    api(server, "POST", "/api/deployments", json={
        "name": "versioned", "model": "gemma-3-270m@1", "replicas": 1, "settings": SMALL})
    ready(server, "versioned", 1)
    with load.steady_load(server.api, "versioned", clients=2) as traffic:
        moved = api(server, "PATCH", "/api/deployments/versioned",
                    json={"model": "gemma-next:next"})
        assert moved.status_code == 200 and moved.json()["generation"] == 2
        assert moved.json()["model_version"] == v2.json()["ref"]
        ready(server, "versioned", 1, generation=2)
        placed = deployment(server, "versioned")["placed"]
        assert placed[0]["model_version"] == v2.json()["ref"]
        resized = api(server, "PATCH", "/api/deployments/versioned",
                      json={"resources": {"memory": 700 * 2**20, "cpu": 0.5}})
        assert resized.json()["generation"] == 3
        ready(server, "versioned", 1, generation=3)
        assert deployment(server, "versioned")["placed"][0]["reserved"]["memory"] >= 700 * 2**20
    assert traffic.failures == [] and traffic.answered > 0
    api(server, "DELETE", "/api/deployments/versioned")


def test_the_cli_deploys_lists_and_shows(server: RunningServer, tmp_path: Path) -> None:
    url = ["--url", server.url]
    made = llmos("deploy", "cli-made", "gemma-3-270m", "--replicas", "0", "--set", "slots=2",
                 "--memory", "900MiB", "--strategy", "binpack", *url)
    assert made.returncode == 0, made.stderr
    listed = json.loads(llmos("deployments", "ls", "--json", *url).stdout)
    mine = next(d for d in listed if d["name"] == "cli-made")
    assert mine["settings"] == {"slots": 2} and mine["resources"] == {"memory": 900 * 2**20}
    assert mine["strategy"] == "binpack" and mine["replicas"] == 0
    assert llmos("deployments", "scale", "cli-made", "0", *url).returncode == 0
    shown = llmos("deployments", "show", "cli-made", *url)
    assert shown.returncode == 0 and "cli-made" in shown.stdout
    nodes = json.loads(llmos("nodes", "ls", "--json", *url).stdout)
    assert len(nodes) == 1 and nodes[0]["state"] == "ready"
    assert llmos("events", "--deployment", "cli-made", *url).returncode == 0
    missing = llmos("deployments", "show", "nope", *url)
    assert missing.returncode == 1 and "no deployment 'nope'" in missing.stderr
    assert llmos("deployments", "rm", "cli-made", *url).returncode == 0


def test_a_cordoned_node_takes_no_new_replica(server: RunningServer) -> None:
    (node,) = api(server, "GET", "/api/nodes").json()["data"]
    assert api(server, "POST", f"/api/nodes/{node['name']}/cordon").status_code == 200
    try:
        api(server, "POST", "/api/deployments", json={
            "name": "fenced", "model": "gemma-3-270m", "settings": SMALL})
        message = wait_until(lambda: deployment(server, "fenced")["message"], 20,
                             what="an unschedulable message")
        assert "0/1 nodes fit: 1 cordoned" in str(message)
    finally:
        assert api(server, "POST", f"/api/nodes/{node['name']}/uncordon").status_code == 200
    ready(server, "fenced", 1)
    assert deployment(server, "fenced")["message"] is None
    api(server, "DELETE", "/api/deployments/fenced")
