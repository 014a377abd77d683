"""The registry's HTTP API, through the real app (ASGI), on a real store on disk."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from llmos.auth.roles import Role
from llmos.bus.memory import MemoryBus
from llmos.deployments import deploy
from llmos.gateway.app import create_app
from llmos.registry.local import LocalRegistry
from llmos.settings import Settings
from llmos.store import Store
from tests.gateway.running import knows_key
from tests.registry.test_gguf import make_gguf, uint32_entry
from tests.waiting import eventually


class Api:
    def __init__(self, client: httpx.AsyncClient, registry: LocalRegistry, store: Store) -> None:
        self.client = client
        self.registry = registry
        self.store = store

    async def upload(self, content: bytes, filename: str = "model.gguf") -> str:
        response = await self.client.post("/api/blobs", params={"filename": filename},
                                          content=content)
        assert response.status_code == 201, response.text
        digest: str = response.json()["digest"]
        return digest

    async def push(self, name: str, content: bytes, **fields: object) -> dict[str, object]:
        digest = await self.upload(content)
        response = await self.client.post(
            f"/api/models/{name}/versions",
            json={"files": [{"filename": "model.gguf", "digest": digest}], **fields})
        assert response.status_code == 201, response.text
        body: dict[str, object] = response.json()
        return body


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    bus = MemoryBus()
    await bus.connect()
    registry = LocalRegistry(tmp_path / "models")
    app = create_app(settings, bus, store, registry)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield Api(client, registry, store)
    await bus.close()
    store.close()


def error_of(response: httpx.Response) -> dict[str, str]:
    body: dict[str, dict[str, str]] = response.json()
    return body["error"]


@pytest.mark.asyncio
async def test_push_list_show_tag_and_lineage(api: Api) -> None:
    first = await api.push("acme/tiny", make_gguf() + b"1", label="base", creator="ana")
    assert first["ref"] == "acme/tiny@1" and first["created"] is True
    assert first["metadata"]["architecture"] == "gemma3"  # type: ignore[index]
    again = await api.push("acme/tiny", make_gguf() + b"1")
    assert again["created"] is False and again["new_bytes"] == 0
    second = await api.push("acme/tiny", make_gguf() + b"2", derived_from="acme/tiny@1",
                            relation="fine-tune", tag="staging")
    assert second["ref"] == "acme/tiny@2"
    listed = (await api.client.get("/api/models")).json()["data"]
    assert [v["ref"] for v in listed] == ["acme/tiny@1", "acme/tiny@2"]
    for ref in ("acme/tiny", "acme/tiny:latest", "acme/tiny@1",
                f"acme/tiny@{first['blobs'][0]['digest']}"):  # type: ignore[index]
        shown = await api.client.get(f"/api/models/{ref}")
        assert shown.status_code == 200 and shown.json()["version"] == 1, ref
    tagged = await api.client.put("/api/models/acme/tiny@2/tags/prod")
    assert tagged.json()["tags"] == ["prod", "staging"]
    untagged = await api.client.delete("/api/models/acme/tiny/tags/staging")
    assert untagged.json()["tags"] == ["prod"]
    lineage = (await api.client.get("/api/models/acme/tiny:prod/lineage")).json()
    assert [v["ref"] for v in lineage["ancestors"]] == ["acme/tiny@1"]
    lineage = (await api.client.get("/api/models/acme/tiny@1/lineage")).json()
    assert [v["ref"] for v in lineage["descendants"]] == ["acme/tiny@2"]
    missing = await api.client.get("/api/models/acme/tiny:nope")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"


@pytest.mark.asyncio
async def test_blob_download_by_range_and_existence(api: Api) -> None:
    content = make_gguf() + b"tail"
    digest = await api.upload(content)
    head = await api.client.head(f"/api/blobs/{digest}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(content)
    assert (await api.client.head(f"/api/blobs/sha256:{'0' * 64}")).status_code == 404
    whole = await api.client.get(f"/api/blobs/{digest}")
    assert whole.content == content
    part = await api.client.get(f"/api/blobs/{digest}", headers={"range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"GGUF"
    end = await api.client.get(f"/api/blobs/{digest}", headers={"range": "bytes=-4"})
    assert end.content == b"tail"
    # A flipped byte on disk: the blob is refused, not served.
    path = api.registry.files.blob_path(digest)
    path.write_bytes(content[:-1] + b"X")
    corrupt = await api.client.get(f"/api/blobs/{digest}")
    assert corrupt.status_code == 500 and error_of(corrupt)["code"] == "blob_corrupt"


@pytest.mark.asyncio
async def test_bad_uploads_keep_nothing(api: Api) -> None:
    bad = await api.client.post("/api/blobs", params={"filename": "w.gguf"},
                                content=make_gguf()[:300])
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_gguf"
    wrong = await api.client.post("/api/blobs", params={"digest": f"sha256:{'1' * 64}"},
                                  content=b"some bytes")
    assert wrong.status_code == 400 and error_of(wrong)["code"] == "digest_mismatch"
    assert api.registry.blobs.digests() == []
    assert not list(api.registry.root.glob("**/*.part"))
    unknown = await api.client.post("/api/models/m/versions", json={
        "files": [{"filename": "w.gguf", "digest": f"sha256:{'2' * 64}"}]})
    assert unknown.status_code == 400 and "upload it first" in error_of(unknown)["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize("path", [
    "/api/models/..%2F..%2Fetc%2Fpasswd", "/api/models/%2e%2e/x", "/api/models/a/%2e%2e/b",
    "/api/models/UPPER", "/api/models/m@sha256:..%2F..%2Fetc", "/api/models/m:%2e%2e",
    "/api/blobs/sha256:..%2F..%2Fetc%2Fpasswd", "/api/blobs/..%2Fx", "/api/blobs/%2Fetc%2Fpasswd"])
async def test_traversal_is_refused(api: Api, path: str) -> None:
    response = await api.client.get(path)
    assert response.status_code == 400, (path, response.text)


@pytest.mark.asyncio
@pytest.mark.parametrize("params", [
    {"filename": "../../evil.gguf"}, {"filename": "/etc/passwd"},
    {"filename": "%2e%2e%2fx"}, {"digest": "sha256:../../x"}])
async def test_bad_upload_parameters_write_nothing(api: Api, tmp_path: Path,
                                                   params: dict[str, str]) -> None:
    response = await api.client.post("/api/blobs", params=params, content=b"x")
    assert response.status_code == 400
    assert api.registry.blobs.digests() == []
    assert not (tmp_path / "evil.gguf").exists()
    created = await api.client.post("/api/models/..%2Fescape/versions", json={
        "files": [{"filename": "a.gguf", "digest": f"sha256:{'0' * 64}"}]})
    assert created.status_code == 400
    assert not (tmp_path / "escape").exists()


@pytest.mark.asyncio
async def test_a_version_in_use_is_not_deleted(api: Api) -> None:
    await api.push("m", make_gguf() + b"1")
    await api.push("m", make_gguf() + b"2")
    deploy(api.store, api.registry, "chat", "m@1")
    refused = await api.client.delete("/api/models/m@1")
    assert refused.status_code == 409
    assert "deployment 'chat'" in error_of(refused)["message"]
    deleted = await api.client.delete("/api/models/m@2")
    assert deleted.status_code == 200 and deleted.json()["ref"] == "m@2"
    assert (await api.client.get("/api/models/m@2")).status_code == 404
    report = (await api.client.post("/api/registry/gc", params={"grace_s": 0})).json()
    assert report["blobs"] == 1


@pytest.mark.asyncio
async def test_no_route_removes_a_deployed_version(api: Api) -> None:
    """Tag removal, then delete by number or digest, then gc: the pin holds throughout."""
    pushed = await api.push("m", make_gguf() + b"deployed")
    deployment = deploy(api.store, api.registry, "chat", "m")  # "latest", resolved to m@1
    assert deployment.model_version == "m@1"
    assert (await api.client.delete("/api/models/m/tags/latest")).status_code == 200
    digest = pushed["blobs"][0]["digest"]  # type: ignore[index]
    for ref in ("m@1", f"m@{digest}"):
        assert (await api.client.delete(f"/api/models/{ref}")).status_code == 409
    report = (await api.client.post("/api/registry/gc", params={"grace_s": 0})).json()
    assert report["blobs"] == 0
    assert (await api.client.head(f"/api/blobs/{digest}")).status_code == 200
    # deployed again on another version: the first one is free to go
    await api.push("m", make_gguf() + b"next")
    assert deploy(api.store, api.registry, "chat", "m@2").model_version == "m@2"
    assert (await api.client.delete("/api/models/m@1")).status_code == 200
    report = (await api.client.post("/api/registry/gc", params={"grace_s": 0})).json()
    assert report["blobs"] == 1


@pytest.mark.asyncio
async def test_verify_streams_progress_then_problems(api: Api) -> None:
    pushed = await api.push("m", make_gguf())
    response = await api.client.post("/api/registry/verify")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1] == {"problems": []}
    assert lines[-2]["checked"] == lines[-2]["total"] == pushed["size"]
    digest = pushed["blobs"][0]["digest"]  # type: ignore[index]
    path = api.registry.files.blob_path(digest)
    path.write_bytes(b"Z" + path.read_bytes()[1:])
    response = await api.client.post("/api/registry/verify", params={"ref": "m@1"})
    problems = json.loads(response.text.splitlines()[-1])["problems"]
    assert len(problems) == 1 and "corrupt" in problems[0]["problem"]


@pytest.mark.asyncio
async def test_openapi_lists_the_registry_api(api: Api) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    assert {"/api/models", "/api/models/{ref}", "/api/models/{name}/versions",
            "/api/blobs", "/api/blobs/{digest}", "/api/registry/gc"} <= set(paths)
    assert "application/octet-stream" in paths["/api/blobs"]["post"]["requestBody"]["content"]


@pytest.mark.asyncio
async def test_an_estimate_for_other_settings(api: Api) -> None:
    layout = tuple(uint32_entry(f"gemma3.{key}", value) for key, value in (
        ("block_count", 6), ("embedding_length", 256), ("attention.head_count", 4),
        ("attention.head_count_kv", 1), ("attention.key_length", 64),
        ("attention.value_length", 64)))
    await api.push("m", make_gguf(extra=layout))
    small = (await api.client.get("/api/models/m/estimate",
                                  params={"slots": 1, "ctx_size": 1024})).json()
    large = (await api.client.get("/api/models/m/estimate",
                                  params={"slots": 8, "ctx_size": 8192})).json()
    assert small["ref"] == "m@1" and (small["slots"], small["ctx_size"]) == (1, 1024)
    assert large["loaded_bytes"] > small["loaded_bytes"]
    quantized = (await api.client.get("/api/models/m/estimate",
                                      params={"slots": 8, "ctx_size": 8192, "kv_type": "q8_0"}
                                      )).json()
    assert quantized["kv_cache_bytes"] < large["kv_cache_bytes"]
    bad = await api.client.get("/api/models/m/estimate", params={"kv_type": "f99"})
    assert bad.status_code == 400 and "q8_0" in error_of(bad)["message"]


@pytest.mark.asyncio
async def test_a_full_disk_is_a_507_and_keeps_nothing(tmp_path: Path) -> None:
    import os

    from tests.registry.test_local import small_disk

    with small_disk(tmp_path / "disk", "1m") as disk:
        settings = Settings(home=tmp_path)
        store = Store(settings.db_url)
        store.migrate()
        bus = MemoryBus()
        await bus.connect()
        registry = LocalRegistry(disk / "models")
        app = create_app(settings, bus, store, registry)
        try:
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
                full = await client.post("/api/blobs", params={"filename": "big.gguf"},
                                         content=make_gguf() + os.urandom(2 << 20))
                assert full.status_code == 507
                assert error_of(full)["code"] == "insufficient_storage"
                assert "out of disk space" in error_of(full)["message"]
        finally:
            await bus.close()
            store.close()
        assert registry.blobs.digests() == []
        assert not list(disk.rglob("*.part"))


@pytest.mark.asyncio
async def test_a_resumable_upload_session(api: Api) -> None:
    import hashlib

    content = make_gguf() + b"z" * 5000
    digest = f"sha256:{hashlib.sha256(content).hexdigest()}"
    opened = (await api.client.post("/api/uploads", json={
        "digest": digest, "size": len(content), "filename": "w.gguf"})).json()
    assert opened["offset"] == 0
    upload = f"/api/uploads/{opened['id']}"
    first = await api.client.patch(upload, params={"offset": 0}, content=content[:1000])
    assert first.json()["offset"] == 1000
    again = (await api.client.post("/api/uploads", json={
        "digest": digest, "size": len(content), "filename": "w.gguf"})).json()
    assert (again["id"], again["offset"]) == (opened["id"], 1000)  # resume, not restart
    wrong = await api.client.patch(upload, params={"offset": 0}, content=b"x")
    assert wrong.status_code == 409 and "offset 1000" in error_of(wrong)["message"]
    early = await api.client.post(f"{upload}/finish")
    assert early.status_code == 409
    assert (await api.client.head(f"/api/blobs/{digest}")).status_code == 404
    await api.client.patch(upload, params={"offset": 1000}, content=content[1000:])
    done = (await api.client.post(f"{upload}/finish")).json()
    assert done == {"digest": digest, "size": len(content), "new": True}
    assert (await api.client.get(f"/api/blobs/{digest}")).content == content
    assert (await api.client.get(upload)).status_code == 404


@pytest.mark.asyncio
async def test_an_upload_that_does_not_match_keeps_nothing(api: Api) -> None:
    claimed = f"sha256:{'3' * 64}"
    opened = (await api.client.post("/api/uploads", json={
        "digest": claimed, "size": 4})).json()
    await api.client.patch(f"/api/uploads/{opened['id']}", params={"offset": 0},
                           content=b"abcd")
    finish = await api.client.post(f"/api/uploads/{opened['id']}/finish")
    assert finish.status_code == 400 and error_of(finish)["code"] == "digest_mismatch"
    assert api.registry.blobs.digests() == []
    assert not list((api.registry.root / "uploads").iterdir())
    bad = await api.client.get("/api/uploads/..%2F..%2Fetc")
    assert bad.status_code in (400, 404)


def test_one_writer_per_upload_session(tmp_path: Path) -> None:
    import threading

    from llmos.errors import Conflict

    registry = LocalRegistry(tmp_path / "models")
    upload = registry.uploads.open(f"sha256:{'4' * 64}", 10)
    holding = threading.Event()
    release = threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"12345"
        holding.set()
        release.wait(10)

    writer = threading.Thread(target=registry.uploads.append, args=(upload.id, 0, slow()))
    writer.start()
    assert holding.wait(10)
    with pytest.raises(Conflict, match="another client"):
        registry.uploads.append(upload.id, 0, iter([b"x"]))
    with pytest.raises(Conflict):
        registry.uploads.finish(upload.id)
    release.set()
    writer.join()
    assert registry.uploads.get(upload.id).offset == 5


@pytest.mark.asyncio
@pytest.mark.usefixtures("keys_seen_soon")
async def test_verify_keeps_to_the_keys_project_unless_an_admins(api: Api) -> None:
    mine = await api.push("m", make_gguf() + b"mine")
    theirs = await api.upload(make_gguf() + b"theirs")
    made = await api.client.post("/api/models/m/versions", params={"project": "b"},
                                 json={"files": [{"filename": "model.gguf",
                                                  "digest": theirs}]})
    assert made.status_code == 201, made.text
    path = api.registry.files.blob_path(theirs)
    path.write_bytes(b"Z" + path.read_bytes()[1:])  # project b's version is corrupt
    now = time.time()
    _, operator = api.store.keys.create("op", Role.operator, "default", now=now)
    _, admin = api.store.keys.create("admin", Role.admin, "default", now=now)
    await eventually(lambda: knows_key(api.client, operator, admin), what="the keys known")

    async def verify(token: str) -> tuple[int, list[dict[str, str]]]:
        response = await api.client.post("/api/registry/verify",
                                         headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        return lines[-2]["total"], lines[-1]["problems"]

    total, problems = await verify(operator)
    assert (total, problems) == (mine["size"], [])  # nothing of project b, not even its size
    _, problems = await verify(admin)
    assert [p["ref"] for p in problems] == ["b/m@1"]


@pytest.mark.asyncio
async def test_a_plan_sizes_every_slot_count_and_names_the_cheapest(api: Api) -> None:
    layout = tuple(uint32_entry(f"gemma3.{key}", value) for key, value in (
        ("block_count", 6), ("embedding_length", 256), ("attention.head_count", 4),
        ("attention.head_count_kv", 1), ("attention.key_length", 64),
        ("attention.value_length", 64)))
    await api.push("m", make_gguf(extra=layout))
    curve = [{"slots": 1, "prefill_tps": 900, "decode_tps": 58},
             {"slots": 4, "prefill_tps": 500, "decode_tps": 16.6}]
    body = {"rate": 3.0, "prompt_tokens": 200, "output_tokens": 72, "wait_s": 1.0,
            "percentile": 0.99, "service_cv2": 0.23, "curve": curve}
    response = await api.client.post("/api/models/m/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {s["slots"] for s in answer["shapes"]} == {1, 4}
    assert answer["cheapest"] == answer["shapes"][0]
    assert all(s["memory_bytes"] >= answer["cheapest"]["memory_bytes"]
               for s in answer["shapes"])
    for shape in answer["shapes"]:
        assert shape["wait_s"] <= 1.0 and shape["utilization"] < 1
        assert shape["replicas"] >= 1
    missing = await api.client.post("/api/models/nothing/plan", json=body)
    assert missing.status_code == 404
    assert (await api.client.post("/api/models/m/plan",
                                  json=body | {"curve": []})).status_code == 400
    huge = body | {"rate": 1e6, "curve": [{"slots": 1, "prefill_tps": 1e-6,
                                            "decode_tps": 1e-6}] * 64}
    started = time.monotonic()
    refused = await api.client.post("/api/models/m/plan", json=huge)
    assert refused.status_code == 400 and time.monotonic() - started < 5
