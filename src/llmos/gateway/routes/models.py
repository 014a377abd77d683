"""Management API of the model registry: versions, tags, lineage, blobs, upkeep.

Uploading a version is two steps, as with container registries: each file's
content goes to ``POST /api/blobs`` (the server hashes it as it writes; a GGUF
header is checked before the blob becomes visible), then ``POST
/api/models/{name}/versions`` names the blobs. A version is visible only once
its manifest is written, so a half-finished upload never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmos import capabilities
from llmos.auth.roles import Principal, Role
from llmos.capabilities import Capability
from llmos.errors import BadRequest, LLMOSError, NotFound, RegistryError
from llmos.gateway.auth import PrincipalDep, ProjectDep, principal_of, requires
from llmos.gateway.deps import StateDep
from llmos.gateway.guard import has_body
from llmos.gateway.routing import only_specific
from llmos.gateway.schemas import ErrorResponse
from llmos.gateway.state import GatewayState
from llmos.registry import templates, upkeep
from llmos.registry.blobs import CHUNK, BlobCorrupt, Stored, hash_file
from llmos.registry.estimate import KV_TYPES
from llmos.registry.lineage import lineage as find_lineage
from llmos.registry.local import LocalRegistry
from llmos.registry.manifest import RELATIONS, ModelVersion
from llmos.registry.metadata import FILENAME_RE, PATH_RE
from llmos.registry.refs import DIGEST_PATTERN, NAME_PATTERN, REF_PATTERN, TAG_PATTERN
from llmos.registry.uploads import UPLOAD_ID_PATTERN

router = APIRouter(tags=["models"])
T = TypeVar("T")

RefPath = Annotated[str, Path(pattern=REF_PATTERN, description="name, name:tag, name@N or "
                              "name@sha256:<hex> (a blob of the version)")]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="[namespace/]name")]
TagPath = Annotated[str, Path(pattern=TAG_PATTERN)]
DigestPath = Annotated[str, Path(pattern=DIGEST_PATTERN, description="sha256:<64 hex>")]
UploadIdPath = Annotated[str, Path(pattern=UPLOAD_ID_PATTERN)]


class BlobPublic(BaseModel):
    digest: str
    size: int
    media_type: str
    filename: str


class ChatTemplateInfo(BaseModel):
    source: Literal["deployment", "file", "gguf", "family", "fallback"]
    """Where it comes from: a deployment's setting, a file stored with the version, the
    GGUF's own, the built-in of the architecture's family, or llama.cpp's ChatML
    fallback."""
    name: str
    """The built-in's or the file's name, ``gguf``, or ``custom``."""
    sha256: str | None = None
    """Of the template's text, where LLMOS supplies it."""
    warning: str | None = None


class VersionPublic(BaseModel):
    ref: str
    name: str
    version: int
    project: str
    tags: list[str]
    label: str | None
    created_at: float
    creator: str | None
    derived_from: str | None
    relation: str | None
    size: int
    blobs: list[BlobPublic]
    metadata: dict[str, Any]
    """Facts read from the GGUF header: architecture, sizes, attention layout."""
    config: dict[str, Any]
    estimate: dict[str, Any] | None
    """Memory one replica needs under the server's default engine settings."""
    chat_template: ChatTemplateInfo | None
    """The chat template it is served with unless a deployment sets its own (GGUF
    models; none for the others, whose engine or provider renders chats its own way)."""
    engine: str
    """The engine that serves it, by its format."""
    capabilities: list[Capability]
    """What a deployment of it does with default settings (a GGUF or remote model does
    embeddings instead when deployed with ``embedding: true``)."""


class VersionList(BaseModel):
    data: list[VersionPublic]


class VersionCreated(VersionPublic):
    created: bool
    """False when an identical version existed: it was tagged, nothing was added."""
    new_bytes: int


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    filename: str = Field(pattern=PATH_RE.pattern)
    digest: str = Field(pattern=DIGEST_PATTERN)


class NewVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    files: list[FileEntry] = Field(min_length=1, max_length=1024)
    tag: str | None = Field(None, pattern=TAG_PATTERN)
    label: str | None = Field(None, max_length=500)
    derived_from: str | None = Field(None, pattern=REF_PATTERN)
    relation: str | None = Field(None, pattern=f"^({'|'.join(RELATIONS)})$")
    creator: str | None = Field(None, max_length=200)


class BlobStored(BaseModel):
    digest: str
    size: int
    new: bool


class Lineage(BaseModel):
    version: VersionPublic
    ancestors: list[VersionPublic]
    """Nearest first: the version this one was derived from, then its parent, …"""
    descendants: list[VersionPublic]


class GcResult(BaseModel):
    blobs: int
    bytes: int
    parts: int
    folders: int


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "an invalid name, reference or file"},
    404: {"model": ErrorResponse, "description": "no such version, tag or blob"}}


def public(version: ModelVersion) -> VersionPublic:
    engine = capabilities.engine_for((version.config or {}).get("format"))
    return VersionPublic(
        ref=version.ref, name=version.name, version=version.version, project=version.project,
        tags=list(version.tags), label=version.label, created_at=version.created_at,
        creator=version.creator, derived_from=version.derived_from, relation=version.relation,
        size=version.size, blobs=[BlobPublic(**b.to_dict()) for b in version.blobs],
        metadata=version.metadata, config=version.config, estimate=version.estimate,
        chat_template=(ChatTemplateInfo(**templates.choose(version).describe())
                       if engine == "llama.cpp" else None),
        engine=engine,
        capabilities=capabilities.listed(capabilities.of(engine, embedding=False)))


def _registry(state: Any) -> LocalRegistry:
    registry: LocalRegistry = state.registry
    return registry


def _held(state: GatewayState, principal: Principal, digests: set[str]) -> set[str]:
    """Those of ``digests`` the principal may use (blocking): an admin or a node, any;
    another key, those its project's versions name or its project's keys uploaded
    (store/grants.py): a digest alone proves nothing."""
    if principal.role in (Role.admin, Role.node):
        return set(digests)
    named = {b.digest for v in _registry(state).catalog.list(project=principal.project)
             for b in v.blobs}
    held = digests & named
    return held | state.catalog.store.grants.granted(digests - held, principal.project)


async def _must_hold(state: GatewayState, principal: Principal, digest: str) -> None:
    if digest not in await asyncio.to_thread(_held, state, principal, {digest}):
        raise NotFound(f"blob {digest} not found")


async def _granted(state: GatewayState, principal: Principal, digest: str) -> None:
    """The principal's project uploaded ``digest``: it may use it from now on."""
    if principal.role is not Role.admin:
        await asyncio.to_thread(state.catalog.store.grants.grant, digest, principal.project,
                                time.time())


# versions ------------------------------------------------------------------------------

@router.get("/api/models", response_model=VersionList, responses=_ERRORS)
@requires(Role.user)
async def list_models(state: StateDep, project: ProjectDep) -> VersionList:
    """Every version of every repository in the project, by name then version."""
    versions = await asyncio.to_thread(_registry(state).catalog.list, project=project)
    return VersionList(data=[public(v) for v in versions])


@router.post("/api/models/{name:path}/versions", response_model=VersionCreated,
             status_code=201, responses=_ERRORS)
@requires(Role.operator)
async def create_version(name: NamePath, body: NewVersion, state: StateDep,
                         project: ProjectDep, principal: PrincipalDep) -> VersionCreated:
    """A new version of ``name`` made of blobs already uploaded (``POST /api/blobs``) by a
    key of the project, or that its versions already name."""
    wanted = {f.digest for f in body.files}
    held = await asyncio.to_thread(_held, state, principal, wanted)
    for f in body.files:
        if f.digest not in held:
            raise BadRequest(f"blob {f.digest} of {f.filename} is not in the store; upload "
                             "it first", param="files")
    imported = await asyncio.to_thread(
        _registry(state).create_version, name, [(f.filename, f.digest) for f in body.files],
        tag=body.tag, project=project, label=body.label, derived_from=body.derived_from,
        relation=body.relation, creator=body.creator)
    return VersionCreated(**public(imported.version).model_dump(), created=imported.created,
                          new_bytes=imported.new_bytes)


@router.get("/api/models/{ref:path}/lineage", response_model=Lineage, responses=_ERRORS)
@requires(Role.user)
async def lineage(ref: RefPath, state: StateDep, project: ProjectDep) -> Lineage:
    """Where a version came from (``derived_from``, followed up) and what was made from it."""
    registry = _registry(state)
    version = await asyncio.to_thread(registry.catalog.get, ref, project=project)
    ancestors, descendants = await asyncio.to_thread(find_lineage, registry, ref, project=project)
    return Lineage(version=public(version), ancestors=[public(v) for v in ancestors],
                   descendants=[public(v) for v in descendants])


@router.get("/api/models/{ref:path}/estimate", response_model=dict[str, Any],
            responses=_ERRORS)
@requires(Role.user)
async def estimate(
    ref: RefPath, state: StateDep, project: ProjectDep,
    slots: Annotated[int | None, Query(ge=1, le=256, description="parallel slots")] = None,
    ctx_size: Annotated[int | None, Query(ge=0, description="total context (0: the "
                                                            "model's own)")] = None,
    kv_type: Annotated[str, Query(description="KV cache type: f16, q8_0, q4_0 …",
                                  pattern=f"^({'|'.join(KV_TYPES)})$")] = "f16",
    kv_unified: Annotated[bool | None, Query(description="one KV cache for all slots")
                          ] = None,
    cache_ram_mib: Annotated[int | None, Query(ge=0, description="prompt cache limit")
                             ] = None,
) -> dict[str, Any]:
    """Memory one replica of the version needs under these engine settings (each one not
    given is the server's default); bytes of weights, KV cache, compute, runtime, and
    what the prompt cache can grow to."""
    from llmos.registry.estimate import estimate_resources

    registry = _registry(state)
    engine = state.settings.engine
    version = await asyncio.to_thread(registry.catalog.get, ref, project=project)
    info, weights_bytes = await asyncio.to_thread(registry.files.weights_info, version)
    try:
        result = estimate_resources(
            info, weights_bytes=weights_bytes, slots=slots or engine.slots,
            ctx_size=engine.ctx_size if ctx_size is None else ctx_size, kv_type=kv_type,
            kv_unified=engine.kv_unified if kv_unified is None else kv_unified,
            cache_ram_mib=engine.cache_ram_mib if cache_ram_mib is None else cache_ram_mib,
            n_batch=engine.batch_size, n_ubatch=engine.batch_size)
    except ValueError as exc:
        raise BadRequest(str(exc), param="kv_type") from None
    return {"ref": version.ref, **result.to_dict()}


class SlotSpeedBody(BaseModel):
    slots: int = Field(ge=1, le=256, description="requests a replica runs at once")
    prefill_tps: float = Field(gt=0, description="prompt tokens per second of one request "
                               "while that many run")
    decode_tps: float = Field(gt=0, description="generated tokens per second of one "
                              "request while that many run")


class PlanBody(BaseModel):
    rate: float = Field(gt=0, le=1e6, description="requests per second")
    prompt_tokens: int = Field(ge=0, le=10_000_000)
    output_tokens: int = Field(ge=1, le=10_000_000)
    wait_s: float = Field(gt=0, le=86_400, description="a request starts within this ...")
    percentile: float = Field(0.99, gt=0, lt=1, description="... for this fraction")
    service_cv2: float = Field(1.0, ge=0, le=100, description="variance / mean² of the "
                               "service time (1: exponential; fixed lengths: near 0)")
    curve: list[SlotSpeedBody] = Field(min_length=1, max_length=64, description="the "
                                       "replica's measured speed per request at each slot "
                                       "count (llmos models plan --measure)")
    kv_type: str = Field("f16", pattern=f"^({'|'.join(KV_TYPES)})$")


class PlanShape(BaseModel):
    replicas: int
    slots: int
    service_s: float
    wait_s: float
    """The wait at the objective's percentile."""
    mean_wait_s: float
    utilization: float
    memory_bytes: int
    """All replicas together (the registry's estimate per replica)."""


class PlanAnswer(BaseModel):
    cheapest: PlanShape
    shapes: list[PlanShape]
    """Every slot count of the curve, cheapest first."""


@router.post("/api/models/{ref:path}/plan", response_model=PlanAnswer, responses=_ERRORS)
@requires(Role.user)
async def plan(ref: RefPath, body: PlanBody, state: StateDep,
               project: ProjectDep) -> PlanAnswer:
    """The cheapest (replicas, slots per replica) for a traffic and a wait objective:
    Erlang C with the Allen-Cunneen correction for each slot count of the replica's
    measured speed curve, memory from the registry's estimate at that slot count (a
    context of the prompt and output per slot)."""
    from llmos.autoscale.plan import Objective, SlotSpeed, shapes
    from llmos.registry.estimate import estimate_resources

    registry = _registry(state)
    engine = state.settings.engine
    version = await asyncio.to_thread(registry.catalog.get, ref, project=project)
    info, weights_bytes = await asyncio.to_thread(registry.files.weights_info, version)
    per_slot = body.prompt_tokens + body.output_tokens

    def memory(slots: int) -> int:
        return estimate_resources(
            info, weights_bytes=weights_bytes, slots=slots, ctx_size=slots * per_slot,
            kv_type=body.kv_type, kv_unified=engine.kv_unified,
            cache_ram_mib=engine.cache_ram_mib, n_batch=engine.batch_size,
            n_ubatch=engine.batch_size).total_bytes

    curve = [SlotSpeed(c.slots, c.prefill_tps, c.decode_tps) for c in body.curve]
    try:
        found = await asyncio.to_thread(
            shapes, body.rate, body.prompt_tokens, body.output_tokens, curve, memory,
            Objective(body.wait_s, body.percentile), service_cv2=body.service_cv2)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    answer = [PlanShape(**vars(s)) for s in found]
    return PlanAnswer(cheapest=answer[0], shapes=answer)


@router.put("/api/models/{ref:path}/tags/{tag}", response_model=VersionPublic,
            responses=_ERRORS)
@requires(Role.operator)
async def tag_version(ref: RefPath, tag: TagPath, state: StateDep,
                      project: ProjectDep) -> VersionPublic:
    """Point ``tag`` at the version ``ref`` names; a tag elsewhere in the repository moves."""
    version = await asyncio.to_thread(_registry(state).tag, ref, tag, project=project)
    return public(version)


@router.delete("/api/models/{ref:path}/tags/{tag}", response_model=VersionPublic,
               responses=_ERRORS)
@requires(Role.operator)
async def untag_version(ref: NamePath, tag: TagPath, state: StateDep,
                        project: ProjectDep) -> VersionPublic:
    """Remove a tag (``ref`` is the repository's name); the version it named stays."""
    version = await asyncio.to_thread(_registry(state).untag, f"{ref}:{tag}",
                                      project=project)
    return public(version)


@router.get("/api/models/{ref:path}", response_model=VersionPublic, responses=_ERRORS)
@requires(Role.user, nodes=True)
async def show_model(ref: RefPath, request: Request, state: StateDep,
                     project: ProjectDep) -> VersionPublic:
    """One version: ``name`` (its ``latest``), ``name:tag``, ``name@3`` or ``name@sha256:…``."""
    only_specific(request)
    return public(await asyncio.to_thread(_registry(state).catalog.get, ref, project=project))


@router.delete("/api/models/{ref:path}", response_model=VersionPublic, responses={
    **_ERRORS, 409: {"model": ErrorResponse, "description": "a deployment uses the version"}})
@requires(Role.operator)
async def delete_version(ref: RefPath, request: Request, state: StateDep,
                         project: ProjectDep) -> VersionPublic:
    """Delete one version and its tags; its blobs go at the next ``gc`` if unshared. A
    version a deployment is pinned to is refused (409), whatever name it is given by."""
    only_specific(request)
    return public(await asyncio.to_thread(_registry(state).delete, ref, project=project))


# blobs ---------------------------------------------------------------------------------

_STOP = object()


@router.post("/api/blobs", response_model=BlobStored, status_code=201, responses={
    **_ERRORS, 507: {"model": ErrorResponse, "description": "the store is out of disk space"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
@requires(Role.operator)
async def upload_blob(request: Request, state: StateDep,
                      filename: Annotated[str | None, Query(
                          description="the file's name: a *.gguf has its header checked",
                          pattern=FILENAME_RE.pattern)] = None,
                      digest: Annotated[str | None, Query(
                          description="sha256:<hex> the content must hash to",
                          pattern=DIGEST_PATTERN)] = None,
                      ) -> BlobStored:
    """Store the request body as a blob, hashing it as it is written (one pass)."""
    registry = _registry(state)
    stored: Stored = await _body_to_thread(
        request, lambda body: registry.put_blob(body, filename=filename, expected=digest))
    await _granted(state, principal_of(request.scope), stored.digest)
    return BlobStored(digest=stored.digest, size=stored.size, new=stored.new)


async def _body_to_thread(request: Request, consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consume`` on a thread over the request body as it arrives (bounded buffer)."""
    chunks: queue.Queue[Any] = queue.Queue(maxsize=4)  # at most 4 x CHUNK in memory

    def body() -> Iterator[bytes]:
        while True:
            item = chunks.get()
            if item is _STOP:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    writer = asyncio.create_task(asyncio.to_thread(consume, body()))
    try:
        async for chunk in _rechunk(request.stream()):
            if not writer.done():
                await _put(chunks, chunk, writer)
            # else the writer refused (disk full): read the rest, so that the client
            # gets the error instead of a connection reset in the middle of its upload
        await _put(chunks, _STOP, writer)
    except BaseException as exc:  # the client went away
        await _put(chunks, RegistryError("the upload was cut off"), writer)
        with contextlib.suppress(BaseException):
            await writer
        raise exc
    return await writer


async def _rechunk(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body in pieces of about CHUNK bytes: fewer hand-offs to the writer thread."""
    pending = bytearray()
    async for piece in stream:
        pending += piece
        if len(pending) >= CHUNK:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


async def _put(chunks: queue.Queue[Any], item: Any, writer: asyncio.Task[Any]) -> None:
    while not writer.done():
        try:
            chunks.put_nowait(item)
            return
        except queue.Full:
            await asyncio.sleep(0.005)


@router.head("/api/blobs/{digest:path}", responses=_ERRORS)
@requires(Role.user, nodes=True)
async def blob_exists(digest: DigestPath, state: StateDep,
                      principal: PrincipalDep) -> Response:
    """200 with the size when the store has the blob and the key's project holds it (its
    versions name it, or one of its keys uploaded it): an upload of it can be skipped."""
    await _must_hold(state, principal, digest)
    size = await asyncio.to_thread(_registry(state).files.blob_size, digest)
    if size is None:
        raise NotFound(f"blob {digest} not found")
    return Response(media_type="application/octet-stream",
                    headers={"content-length": str(size), "accept-ranges": "bytes"})


@router.get("/api/blobs/{digest:path}", response_class=FileResponse, responses={
    **_ERRORS, 200: {"content": {"application/octet-stream": {}},
                     "description": "the content; a Range header gets 206 and that part"}})
@requires(Role.user, nodes=True)
async def download_blob(digest: DigestPath, state: StateDep,
                        principal: PrincipalDep) -> FileResponse:
    """A blob's content, whole or by ``Range``; checked against its digest first. Only
    of a blob the key's project holds (404 for another, as for none)."""
    await _must_hold(state, principal, digest)
    registry = _registry(state)
    path = await asyncio.to_thread(registry.files.blob_path, digest)
    stat = path.stat()
    key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if state.verified_blobs.get(digest) != key:
        actual = await asyncio.to_thread(hash_file, path)
        if actual != digest:
            raise BlobCorrupt(f"blob {digest} is corrupt on this server (its content hashes "
                                f"to {actual}); it is not served. Run `llmos models verify`")
        state.verified_blobs[digest] = key
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"docker-content-digest": digest})


# resumable uploads ---------------------------------------------------------------------

MAX_BLOB_BYTES = 1 << 40
"""The largest blob an upload session takes (1 TiB)."""


class NewUpload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    digest: str = Field(pattern=DIGEST_PATTERN)
    size: int = Field(ge=0, le=MAX_BLOB_BYTES)
    filename: str | None = Field(None, pattern=FILENAME_RE.pattern)


class UploadPublic(BaseModel):
    id: str
    digest: str
    size: int
    offset: int
    """Bytes the server has: a resumed upload sends from here."""
    filename: str | None


def _upload(upload: Any) -> UploadPublic:
    return UploadPublic(id=upload.id, digest=upload.digest, size=upload.size,
                        offset=upload.offset, filename=upload.filename)


@router.post("/api/uploads", response_model=UploadPublic, status_code=201, responses=_ERRORS)
@requires(Role.operator)
async def open_upload(body: NewUpload, state: StateDep) -> UploadPublic:
    """A session to send one blob in as many requests as it takes; an unfinished session
    for the same digest is returned instead of a new one, at its offset (resume)."""
    upload = await asyncio.to_thread(_registry(state).uploads.open, body.digest, body.size,
                                     body.filename)
    return _upload(upload)


@router.get("/api/uploads/{upload_id}", response_model=UploadPublic, responses=_ERRORS)
@requires(Role.operator)
async def get_upload(upload_id: UploadIdPath, state: StateDep) -> UploadPublic:
    return _upload(await asyncio.to_thread(_registry(state).uploads.get, upload_id))


@router.patch("/api/uploads/{upload_id}", response_model=UploadPublic, responses={
    **_ERRORS, 409: {"model": ErrorResponse, "description": "offset is not the session's"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
@requires(Role.operator)
async def append_upload(upload_id: UploadIdPath, request: Request, state: StateDep,
                        offset: Annotated[int, Query(ge=0, description="where the body goes: "
                                                     "the session's offset")]) -> UploadPublic:
    """Append the body; if the connection drops, what arrived is kept."""
    if not has_body(dict(request.scope["headers"])):
        raise BadRequest("send the bytes to append as the request body", param="body")
    uploads = _registry(state).uploads
    upload = await _body_to_thread(request, lambda body: uploads.append(upload_id, offset,
                                                                        body))
    return _upload(upload)


@router.post("/api/uploads/{upload_id}/finish", response_model=BlobStored, responses={
    **_ERRORS, 409: {"model": ErrorResponse, "description": "the session has not all the "
                     "bytes yet"}})
@requires(Role.operator)
async def finish_upload(upload_id: UploadIdPath, state: StateDep,
                        principal: PrincipalDep) -> BlobStored:
    """Check the digest (and a GGUF header) and make the blob visible; a mismatch keeps
    nothing."""
    stored = await asyncio.to_thread(_registry(state).finish_upload, upload_id)
    await _granted(state, principal, stored.digest)
    return BlobStored(digest=stored.digest, size=stored.size, new=stored.new)


@router.delete("/api/uploads/{upload_id}", status_code=204, responses=_ERRORS)
@requires(Role.operator)
async def cancel_upload(upload_id: UploadIdPath, state: StateDep) -> Response:
    await asyncio.to_thread(_registry(state).uploads.cancel, upload_id)
    return Response(status_code=204)


# upkeep --------------------------------------------------------------------------------

@router.post("/api/registry/gc", response_model=GcResult, tags=["models"])
@requires(Role.admin)
async def collect_garbage(state: StateDep, grace_s: Annotated[float, Query(
        ge=0, description="keep unnamed blobs younger than this (uploads in progress)")
        ] = 3600.0) -> GcResult:
    """Remove blobs no version names, stale ``*.part`` files and orphaned file folders."""
    report = await asyncio.to_thread(upkeep.gc, _registry(state), grace_s=grace_s)
    return GcResult(blobs=report.blobs, bytes=report.bytes, parts=report.parts,
                    folders=report.folders)


@router.post("/api/registry/verify", responses={**_ERRORS, 200: {
    "content": {"application/x-ndjson": {}},
    "description": 'lines of {"checked", "total"} bytes, then {"problems": [...]}'}})
@requires(Role.operator)
async def verify(state: StateDep, project: ProjectDep, principal: PrincipalDep,
                 ref: Annotated[str | None, Query(
                     description="one version (default: every version of the project; an "
                                 "admin's: of every project)",
                     pattern=REF_PATTERN)] = None) -> StreamingResponse:
    """Re-hash blobs against their digests; the answer streams progress, then problems."""
    registry = _registry(state)
    everywhere = principal.role is Role.admin
    total = await asyncio.to_thread(upkeep.verify_bytes, registry, ref, project=project,
                                    everywhere=everywhere)
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    checked = 0

    def progress(n: int) -> None:
        nonlocal checked
        checked += n
        line = json.dumps({"checked": checked, "total": total}) + "\n"
        loop.call_soon_threadsafe(lines.put_nowait, line)

    async def run() -> None:
        try:
            problems = await asyncio.to_thread(upkeep.verify, registry, ref, project=project,
                                               everywhere=everywhere, progress=progress)
            await lines.put(json.dumps({"problems": [
                {"ref": p.ref, "digest": p.digest, "problem": p.problem}
                for p in problems]}) + "\n")
        except LLMOSError as exc:
            await lines.put(json.dumps({"error": exc.message}) + "\n")

    async def stream() -> AsyncIterator[str]:
        task = asyncio.create_task(run())
        try:
            while True:
                line = await lines.get()
                yield line
                if not line.startswith('{"checked"'):
                    return
        finally:
            task.cancel()

    return StreamingResponse(stream(), media_type="application/x-ndjson")

