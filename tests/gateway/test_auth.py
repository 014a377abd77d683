"""API keys, roles and projects at the gateway.

The authorization matrix is generated from the app's route table: every route must
declare the least role it needs, and for every route a request with no key, a
malformed, revoked or expired key, a key whose role is too small and (where the
route works in a project) a key of another project is refused as it should be.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from fastapi.routing import APIRoute

from llmos.auth.roles import Role
from llmos.bus.memory import MemoryBus
from llmos.gateway import auth
from llmos.gateway.app import ROUTERS, create_app
from llmos.gateway.auth import UNDECLARED, declared, scoped_project
from llmos.gateway.routes import health, openai
from llmos.settings import Settings
from llmos.store import Store
from tests.gateway.running import knows_key, running
from tests.registry.test_gguf import make_gguf
from tests.waiting import eventually


@dataclass
class Keys:
    admin: str
    operator: str  # project a
    user: str  # project a
    revoked: str
    expired: str
    node: str  # a join token


def make_keys(store: Store) -> Keys:
    now = time.time()
    made = {name: store.keys.create(name, role, project, now=now,
                                    expires_at=now - 1 if name == "expired" else None)[1]
            for name, role, project in (("admin", Role.admin, "default"),
                                        ("operator", Role.operator, "a"),
                                        ("user", Role.user, "a"),
                                        ("revoked", Role.admin, "default"),
                                        ("expired", Role.admin, "default"),
                                        ("node", Role.node, "default"))}
    revoked = next(k for k in store.keys.list() if k.name == "revoked")
    store.keys.revoke(revoked.id, now)
    return Keys(**made)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Keys]]:
    settings = Settings(home=tmp_path, limits={"no_replica_wait_s": 0.2})
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("model-a", "m", project="a")
    store.upsert_deployment("model-b", "m", project="b")
    keys = make_keys(store)
    async with running(settings, store) as (app, client):
        yield app, client, keys
    store.close()


def _scoped(route: APIRoute) -> bool:
    """Whether the route works in a project (takes the ``project`` dependency)."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if dependency.call is scoped_project:
            return True
        pending.extend(dependency.dependencies)
    return False


_SAMPLES = {"key_id": "0123456789ab", "digest": "sha256:" + "0" * 64,
            "upload_id": "0" * 32}


def _path(route: APIRoute) -> str:
    return re.sub(r"\{(\w+)(:path)?\}", lambda m: _SAMPLES.get(m.group(1), "x"), route.path)


def routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """Every (method, route) of the app's routers; the app's OpenAPI operations are
    checked to be exactly these, so none escapes."""
    found = [(method, route) for router in ROUTERS for route in router.routes
             if isinstance(route, APIRoute) for method in sorted(route.methods or ())]
    operations = {(m.upper(), path) for path, ops in app.openapi()["paths"].items()
                  for m in ops}
    assert {(m, r.path.replace(":path}", "}")) for m, r in found
            if r.include_in_schema} == operations
    return found


POLICY: dict[tuple[str, str], tuple[Role | None, bool]] = {
    ("GET", "/v1/models"): (Role.user, False),
    ("GET", "/v1/models/{model_id:path}"): (Role.user, False),
    ("POST", "/v1/chat/completions"): (Role.user, False),
    ("POST", "/v1/completions"): (Role.user, False),
    ("POST", "/v1/embeddings"): (Role.user, False),
    ("POST", "/v1/responses"): (Role.user, False),
    ("GET", "/healthz"): (None, False),
    ("GET", "/readyz"): (None, False),
    ("GET", "/api/version"): (None, False),
    ("GET", "/metrics"): (Role.admin, False),
    ("GET", "/api/workers"): (Role.admin, False),
    ("GET", "/api/workers/{worker_id}"): (Role.admin, False),
    ("POST", "/api/workers/{worker_id}/drain"): (Role.admin, False),
    ("POST", "/api/workers/{worker_id}/resume"): (Role.admin, False),
    ("GET", "/api/logs"): (Role.admin, False),
    ("POST", "/api/keys"): (Role.admin, False),
    ("GET", "/api/keys"): (Role.admin, False),
    ("DELETE", "/api/keys/{key_id}"): (Role.admin, False),
    ("PATCH", "/api/keys/{key_id}"): (Role.admin, False),
    ("GET", "/api/projects/{project}/limits"): (Role.user, False),
    ("PUT", "/api/projects/{project}/limits"): (Role.admin, False),
    ("GET", "/api/usage"): (Role.user, False),
    ("GET", "/api/whoami"): (Role.user, False),
    ("GET", "/api/audit"): (Role.admin, False),
    ("GET", "/api/models"): (Role.user, True),
    ("POST", "/api/models/{name:path}/versions"): (Role.operator, True),
    ("GET", "/api/models/{ref:path}/lineage"): (Role.user, True),
    ("GET", "/api/models/{ref:path}/estimate"): (Role.user, True),
    ("POST", "/api/models/{ref:path}/plan"): (Role.user, True),
    ("PUT", "/api/models/{ref:path}/tags/{tag}"): (Role.operator, True),
    ("DELETE", "/api/models/{ref:path}/tags/{tag}"): (Role.operator, True),
    ("GET", "/api/models/{ref:path}"): (Role.user, True),
    ("DELETE", "/api/models/{ref:path}"): (Role.operator, True),
    ("POST", "/api/blobs"): (Role.operator, False),
    ("HEAD", "/api/blobs/{digest:path}"): (Role.user, False),
    ("GET", "/api/blobs/{digest:path}"): (Role.user, False),
    ("POST", "/api/uploads"): (Role.operator, False),
    ("GET", "/api/uploads/{upload_id}"): (Role.operator, False),
    ("PATCH", "/api/uploads/{upload_id}"): (Role.operator, False),
    ("POST", "/api/uploads/{upload_id}/finish"): (Role.operator, False),
    ("DELETE", "/api/uploads/{upload_id}"): (Role.operator, False),
    ("POST", "/api/registry/gc"): (Role.admin, False),
    ("POST", "/api/registry/verify"): (Role.operator, True),
    ("GET", "/api/deployments"): (Role.user, True),
    ("POST", "/api/deployments"): (Role.operator, True),
    ("GET", "/api/deployments/{name}"): (Role.user, True),
    ("PATCH", "/api/deployments/{name}"): (Role.operator, True),
    ("DELETE", "/api/deployments/{name}"): (Role.operator, True),
    ("POST", "/api/rebalance"): (Role.operator, True),
    ("GET", "/api/nodes"): (Role.admin, False),
    ("GET", "/api/nodes/{name}"): (Role.admin, False),
    ("POST", "/api/nodes/{name}/cordon"): (Role.admin, False),
    ("POST", "/api/nodes/{name}/uncordon"): (Role.admin, False),
    ("POST", "/api/nodes/{name}/drain"): (Role.admin, False),
    ("POST", "/api/nodes/join"): (Role.node, False),
    ("GET", "/api/nodes/bus-permissions"): (Role.admin, False),
    ("GET", "/api/events"): (Role.operator, True),
}
"""Each route: the least role it needs (None: anyone), and whether it works in a
project (a key sees only its own). A change here is a change of who may do what."""

NODE_ROUTES = {("GET", "/api/models/{ref:path}"), ("HEAD", "/api/blobs/{digest:path}"),
               ("GET", "/api/blobs/{digest:path}"), ("GET", "/api/whoami"),
               ("POST", "/api/nodes/join")}
"""What a join token (the node role) may use: joining, and reading the models a node
pulls. Nothing else."""


def test_every_route_declares_the_role_it_needs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    app = create_app(settings, MemoryBus(), Store(settings.db_url))
    undeclared = [f"{m} {r.path}" for m, r in routes(app) if declared(r.endpoint) is UNDECLARED]
    fast = [f"{m} {p}" for (m, p), endpoint in (openai.FAST_ROUTES | health.FAST_ROUTES).items()
            if declared(endpoint) is UNDECLARED]
    assert not undeclared and not fast, f"routes with no declared role: {undeclared + fast}"
    assert {(m, r.path): (declared(r.endpoint), _scoped(r))
            for m, r in routes(app)} == POLICY
    assert {(m, r.path) for m, r in routes(app)
            if getattr(r.endpoint, "llmos_nodes", False) or declared(r.endpoint) is Role.node
            } == NODE_ROUTES


@pytest.mark.asyncio
async def test_the_authorization_matrix(
        served: tuple[FastAPI, httpx.AsyncClient, Keys]) -> None:
    app, client, keys = served
    by_role = {Role.user: keys.user, Role.operator: keys.operator, Role.admin: keys.admin}
    failures: list[str] = []

    async def expect(method: str, path: str, headers: dict[str, str], wanted: set[int],
                     what: str, params: dict[str, str] | None = None) -> None:
        body: Any = {} if method in ("POST", "PUT", "PATCH") else None
        response = await client.request(method, path, headers=headers, params=params,
                                        json=body)
        if response.status_code not in wanted:
            failures.append(f"{method} {path} {what}: {response.status_code} "
                            f"{response.text[:120]}")

    checked = 0
    for method, route in routes(app):
        needed = declared(route.endpoint)
        if needed is None:
            continue
        assert isinstance(needed, Role)
        path = _path(route)
        checked += 1
        await expect(method, path, {}, {401}, "with no key")
        await expect(method, path, {"authorization": "Bearer nonsense"}, {401}, "malformed")
        await expect(method, path, {"authorization": "Basic dTpw"}, {401}, "not a bearer")
        await expect(method, path, bearer(keys.revoked), {401}, "revoked")
        await expect(method, path, bearer(keys.expired), {401}, "expired")
        allowed = {s for s in range(200, 600)} - {401, 403}
        for role, token in by_role.items():
            if role < needed or (needed is Role.node and role is not Role.admin):
                await expect(method, path, bearer(token), {403}, f"as {role.name}")
        await expect(method, path, bearer(keys.node),
                     allowed if (method, route.path) in NODE_ROUTES else {403}, "as a node")
        if needed is not Role.node:
            await expect(method, path, bearer(by_role[needed]), allowed, f"as {needed.name}")
        if _scoped(route) and needed < Role.admin:
            await expect(method, path, bearer(by_role[needed]), {404},
                         "for another project", params={"project": "b"})
    assert checked > 40
    assert not failures, "\n".join(failures)


@pytest.mark.asyncio
async def test_a_key_sees_only_its_own_project(
        served: tuple[FastAPI, httpx.AsyncClient, Keys]) -> None:
    _, client, keys = served
    mine = await client.get("/api/deployments", headers=bearer(keys.operator))
    assert [d["name"] for d in mine.json()["data"]] == ["model-a"]
    other = await client.get("/api/deployments/model-b", headers=bearer(keys.operator),
                             params={"project": "b"})
    assert other.status_code == 404  # never a 403 that says it exists
    models = await client.get("/v1/models", headers=bearer(keys.user))
    assert [m["id"] for m in models.json()["data"]] == ["model-a"]
    for headers in ({}, {"openai-project": "b"}):
        answer = await client.post("/v1/completions", headers=bearer(keys.user) | headers,
                                   json={"model": "model-b", "prompt": "x", "max_tokens": 1})
        assert answer.status_code == 404
    assert (await client.get("/api/deployments/model-b", headers=bearer(keys.admin),
                             params={"project": "b"})).status_code == 200
    admins = await client.get("/v1/models", headers=bearer(keys.admin) | {
        "openai-project": "b"})
    assert [m["id"] for m in admins.json()["data"]] == ["model-b"]
    me = await client.get("/api/whoami", headers=bearer(keys.user))
    assert me.json() | {"key_id": None} == {"key_id": None, "name": "user", "role": "user",
                                            "project": "a"}


@pytest.mark.asyncio
@pytest.mark.usefixtures("keys_seen_soon")
async def test_a_digest_alone_opens_no_other_projects_blob(
        served: tuple[FastAPI, httpx.AsyncClient, Keys]) -> None:
    app, client, keys = served
    store: Store = app.state.gateway.catalog.store
    _, stranger = store.keys.create("b-operator", Role.operator, "b", now=time.time())
    await eventually(lambda: knows_key(client, stranger), what="the new key known")
    content = make_gguf() + b"project a's weights"
    uploaded = await client.post("/api/blobs", params={"filename": "w.gguf"},
                                 content=content, headers=bearer(keys.operator))
    assert uploaded.status_code == 201, uploaded.text
    digest = uploaded.json()["digest"]
    files = {"files": [{"filename": "w.gguf", "digest": digest}]}
    # Project b's key knows the digest, and nothing else: as if there were no such blob.
    assert (await client.head(f"/api/blobs/{digest}",
                              headers=bearer(stranger))).status_code == 404
    assert (await client.get(f"/api/blobs/{digest}",
                             headers=bearer(stranger))).status_code == 404
    refused = await client.post("/api/models/w/versions", json=files, params={"project": "b"},
                                headers=bearer(stranger))
    assert refused.status_code == 400 and "upload it first" in refused.text
    # Project a's keys use it: its operator makes a version, its user downloads it.
    made = await client.post("/api/models/w/versions", json=files,
                             headers=bearer(keys.operator))
    assert made.status_code == 201, made.text
    got = await client.get(f"/api/blobs/{digest}", headers=bearer(keys.user))
    assert got.status_code == 200 and got.content == content
    # Uploading the content is the proof: then project b may use it too (one copy).
    again = await client.post("/api/blobs", params={"filename": "w.gguf"}, content=content,
                              headers=bearer(stranger))
    assert again.status_code == 201 and again.json()["new"] is False
    assert (await client.post("/api/models/w/versions", json=files, params={"project": "b"},
                              headers=bearer(stranger))).status_code == 201
    assert (await client.get(f"/api/blobs/{digest}",
                             headers=bearer(keys.admin))).status_code == 200


@pytest.mark.asyncio
async def test_open_until_the_first_key_then_keys_everywhere(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    async with running(settings, store) as (_, client):
        assert (await client.get("/api/deployments")).status_code == 200  # open
        assert (await client.get("/api/whoami")).json()["key_id"] is None
        made = await client.post("/api/keys", json={"name": "first", "role": "admin"})
        assert made.status_code == 201
        token = made.json()["key"]
        assert token.startswith("llmos-") and len(token) >= 6 + 12 + 1 + 43
        assert (await client.get("/api/deployments")).status_code == 401
        assert (await client.get("/api/deployments",
                                 headers=bearer(token))).status_code == 200
        listed = await client.get("/api/keys", headers=bearer(token))
        assert [k["name"] for k in listed.json()["data"]] == ["first"]
        assert token not in listed.text and "key" not in listed.json()["data"][0]
        [row] = store.keys.list()
        assert row.secret_sha256 != token and token.split(".")[1] not in row.secret_sha256
    store.close()


@pytest.mark.asyncio
async def test_beyond_loopback_keys_are_needed_before_any_exists(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, host="0.0.0.0")
    store = Store(settings.db_url)
    store.migrate()
    async with running(settings, store) as (_, client):
        assert (await client.get("/api/deployments")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
    store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("one_bus", [True, False], ids=["one bus", "message lost"])
async def test_a_revoked_key_stops_working_on_every_gateway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_bus: bool) -> None:
    """At once where the gateways share a bus (the one that revoked it says so there:
    here the books would look again only after a minute); within the reload interval
    where that message is lost (here: two buses)."""
    monkeypatch.setattr(auth, "RELOAD_INTERVAL_S", 60.0 if one_bus else 0.5)
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    row, token = store.keys.create("k", Role.admin, "default", now=time.time())
    bus = MemoryBus()
    await bus.connect()
    shared = bus if one_bus else None
    async with running(settings, Store(settings.db_url), bus=shared) as (_, first), \
            running(settings, Store(settings.db_url), bus=shared) as (_, second):
        assert (await second.get("/api/whoami", headers=bearer(token))).status_code == 200
        revoked = await first.delete(f"/api/keys/{row.id}", headers=bearer(token))
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        assert (await first.get("/api/whoami", headers=bearer(token))).status_code == 401

        async def refused() -> bool:
            return (await second.get("/api/whoami", headers=bearer(token))).status_code == 401

        await eventually(refused, timeout_s=1.0 if one_bus else 2.0, interval_s=0.02,
                         what="the other gateway refusing the key")
    await bus.close()
    store.close()


@pytest.mark.asyncio
async def test_management_actions_and_refusals_are_audited(
        served: tuple[FastAPI, httpx.AsyncClient, Keys]) -> None:
    _, client, keys = served
    made = await client.post("/api/deployments", headers=bearer(keys.operator), json={
        "name": "audited", "model": "m"})
    refused = await client.delete("/api/deployments/model-a", headers=bearer(keys.user))
    assert refused.status_code == 403
    stranger = keys.revoked  # a revoked key: 401, its id kept
    assert (await client.post("/api/rebalance", headers=bearer(stranger))).status_code == 401
    assert (await client.get("/api/deployments", headers=bearer(keys.user))).status_code == 200

    async def at_least(count: int) -> list[dict[str, Any]]:
        answer = await client.get("/api/audit", headers=bearer(keys.admin))
        data: list[dict[str, Any]] = answer.json()["data"]
        return data if len(data) >= count else []

    found = await eventually(lambda: at_least(3), interval_s=0.05, what="3 audit entries")
    by_action = {(e["method"], e["action"]): e for e in found}
    create = by_action[("POST", "create_deployment")]
    assert (create["key_name"], create["role"], create["project"], create["status"]) == (
        "operator", "operator", "a", made.status_code)
    assert create["client"] and create["request_id"] == made.headers["x-request-id"]
    denied = by_action[("DELETE", "delete_deployment")]
    assert (denied["key_name"], denied["status"]) == ("user", 403)
    unknown = next(e for e in found if e["status"] == 401)
    assert unknown["key_id"] == stranger.split(".")[0].removeprefix("llmos-")
    assert unknown["key_name"] is None and unknown["path"] == "/api/rebalance"
    assert not any(e["method"] == "GET" and e["status"] == 200 for e in found)  # reads: no
    failed = await client.get("/api/audit", headers=bearer(keys.admin),
                              params={"failed": "true", "key_id": unknown["key_id"]})
    assert [e["status"] for e in failed.json()["data"]] == [401]


@pytest.mark.asyncio
async def test_a_reload_that_changed_the_keys_calls_back(tmp_path: Path) -> None:
    """(The usage book's seldom exchange wakes so when a limit may have been set.)"""
    store = Store(Settings(home=tmp_path).db_url)
    store.migrate()
    book = auth.KeyBook(store)
    calls: list[int] = []
    book.on_reload(lambda: calls.append(1))
    await book.reload()
    await book.reload()
    assert len(calls) == 1  # the first load; then nothing changed
    store.keys.create("k", Role.user, "default", now=time.time())
    await book.reload()
    assert len(calls) == 2
    store.close()
