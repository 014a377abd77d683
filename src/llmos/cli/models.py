"""``llmos models``: the registry of a running server, over its HTTP API."""

from __future__ import annotations

import getpass
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from llmos.cli.client import (
    UrlOption,
    api_error,
    auth_headers,
    call_api,
    err,
    http_client,
    no_server,
    server_url,
)
from llmos.cli.output import (
    JsonOption,
    Listing,
    OutputOption,
    QuietOption,
    chosen,
    data,
    show,
    table,
)

models_app = typer.Typer(help="Model registry: import, list, tag, verify, delete.",
                         no_args_is_help=True)
out = Console(soft_wrap=True)  # (long lines are the terminal's to wrap: scripts read them whole)

ProjectOption = Annotated[str, typer.Option(help="project of the repositories")]
_CHUNK = 8 << 20


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=err)


def _path(ref: str) -> str:
    return quote(ref, safe="/:@")


# import --------------------------------------------------------------------------------

def _files(path: Path, include: list[str] | None
           ) -> tuple[list[tuple[str, Path]], str | None]:
    """What a path imports as: a folder's files, a file with its split-GGUF siblings, or a
    Hugging Face cache entry's snapshot."""
    from llmos.errors import LLMOSError
    from llmos.registry.sources import model_files

    try:
        found = model_files(path, include)
    except LLMOSError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=2) from None
    return [(found.name_of(i), f) for i, f in enumerate(found.files)], found.origin


def _check_locally(files: list[tuple[str, Path]]) -> None:
    """Refuse a bad GGUF here, before sending hundreds of megabytes to be told so."""
    from llmos.errors import LLMOSError
    from llmos.registry.gguf import read_gguf
    from llmos.registry.metadata import check_filename

    for name, file in files:
        try:
            if not file.is_file():
                raise LLMOSError(f"{file.name} is missing")
            check_filename(name)
            if file.name.lower().endswith(".gguf"):
                read_gguf(file)
        except LLMOSError as exc:
            err.print(f"[red]error:[/red] {file}: {exc.message}")
            raise typer.Exit(code=2) from None


def _upload(client: httpx.Client, file: Path, progress: Progress) -> dict[str, Any]:
    """Sends a file as a blob, unless the server holds its digest already: the file is
    hashed here first (as Docker and Ollama do), so a file re-imported costs a read, not
    an upload. Returns the blob, with ``sent``: the bytes that went over the wire."""
    size = file.stat().st_size
    hashing = progress.add_task(f"{file.name} (hashing)", total=size)
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            progress.advance(hashing, len(chunk))
    progress.remove_task(hashing)
    name = f"sha256:{digest.hexdigest()}"
    held = client.head(f"/api/blobs/{name}")
    if held.status_code == 200:
        return {"digest": name, "size": size, "new": False, "sent": 0}
    task = progress.add_task(file.name, total=size)

    def body() -> Iterator[bytes]:
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                progress.advance(task, len(chunk))
                yield chunk

    response = client.post("/api/blobs", params={"filename": file.name, "digest": name},
                           content=body(),
                           headers={"content-length": str(size),
                                    "content-type": "application/octet-stream"})
    if response.status_code >= 400:
        raise api_error(response)
    stored: dict[str, Any] = response.json()
    return stored | {"sent": size}


@models_app.command("import")
def import_model(
    path: Annotated[Path, typer.Argument(help="a GGUF file (other split parts are found) "
                                              "or a folder of a model's files")],
    name: Annotated[str, typer.Option(help="repository: [namespace/]name")],
    tag: Annotated[str | None, typer.Option(help="tag for the new version")] = None,
    label: Annotated[str | None, typer.Option(help="free text kept with the version")] = None,
    derived_from: Annotated[str | None, typer.Option(
        help="the version this one was made from (name@N, name:tag)")] = None,
    relation: Annotated[str | None, typer.Option(
        help="quantization, fine-tune, adapter or derived (default: a guess)")] = None,
    project: ProjectOption = "default", url: UrlOption = None,
    home: Annotated[Path | None, typer.Option(
        help="import into the store of this LLMOS home directly, with no server (a worker "
             "node's $LLMOS_HOME)")] = None,
    include: Annotated[list[str] | None, typer.Option(
        help="only files matching this glob (repeatable), e.g. '*Q4_K_M*.gguf'; README, "
             "LICENSE and tokenizer files come along")] = None,
) -> None:
    """Upload files to the server's registry as a new version of NAME.

    PATH may be a Hugging Face cache entry (~/.cache/huggingface/hub/models--ORG--NAME):
    its refs/main snapshot is imported from disk, with no call to the hub."""
    files, origin = _files(path, include)
    label = label if label is not None else origin
    _check_locally(files)
    started = time.monotonic()
    if home is not None:
        version = _import_here(home, path, files, name=name, tag=tag, label=label,
                               derived_from=derived_from, relation=relation, project=project,
                               include=include)
        _report(version, time.monotonic() - started)
        return
    base = server_url(url)
    try:
        with http_client(base) as client, \
                _progress() as progress:
            stored = [(n, _upload(client, f, progress)) for n, f in files]
            response = client.post(
                f"/api/models/{_path(name)}/versions", params={"project": project},
                json={"files": [{"filename": n, "digest": s["digest"]} for n, s in stored],
                      "tag": tag, "label": label, "derived_from": derived_from,
                      "relation": relation, "creator": getpass.getuser()})
    except httpx.ConnectError:
        raise no_server(base) from None
    if response.status_code >= 400:
        raise api_error(response)
    sent = sum(s["sent"] for _, s in stored)
    _report(response.json() | {"sent": sent}, time.monotonic() - started)


@models_app.command("remote")
def add_remote(
    name: Annotated[str, typer.Argument(help="repository: [namespace/]name")],
    base_url: Annotated[str, typer.Option(
        help="the provider's API root, e.g. https://api.openai.com/v1")],
    model: Annotated[str, typer.Option(help="the model's name at the provider")],
    api_key_env: Annotated[str | None, typer.Option(
        help="the environment variable that holds the key on the nodes (never stored)")] = None,
    api_key_file: Annotated[str | None, typer.Option(
        help="or a file on the nodes that holds it (a mounted secret)")] = None,
    forward: Annotated[list[str] | None, typer.Option(
        help="a parameter beyond OpenAI's to send upstream (repeatable), e.g. top_k")] = None,
    max_retries: Annotated[int, typer.Option(
        help="tries again on 429, 5xx and refused connections before the first token")] = 4,
    tag: Annotated[str | None, typer.Option(help="tag for the new version")] = None,
    project: ProjectOption = "default", url: UrlOption = None,
) -> None:
    """Add a model served by an OpenAI-compatible provider as a new version of NAME
    (a remote.json: where it is, and where the nodes find its key); deploy it as any."""
    spec = {"base_url": base_url, "model": model, "api_key_env": api_key_env,
            "api_key_file": api_key_file, "forward": forward or [], "max_retries": max_retries}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "remote.json"
        path.write_text(json.dumps({k: v for k, v in spec.items() if v is not None},
                                   indent=2) + "\n", encoding="utf-8")
        import_model(path, name=name, tag=tag, label=f"{model} at {base_url}",
                     project=project, url=url)


def _import_here(home: Path, path: Path, files: list[tuple[str, Path]], *, project: str,
                 **fields: Any) -> dict[str, Any]:
    from llmos.errors import LLMOSError
    from llmos.registry.defaults import open_registry
    from llmos.settings import Settings

    registry = open_registry(Settings(home=home))
    try:
        with _progress() as progress:
            task = progress.add_task(path.name, total=sum(f.stat().st_size for _, f in files))
            imported = registry.import_path(path, project=project, creator=getpass.getuser(),
                                            progress=lambda n: progress.advance(task, n),
                                            **fields)
    except LLMOSError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=2) from None
    version = imported.version
    return {"ref": version.ref, "size": version.size, "tags": list(version.tags),
            "created": imported.created, "new_bytes": imported.new_bytes}


def _report(version: dict[str, Any], took: float) -> None:
    sent = version.get("sent")
    wire = f"; {human_size(sent)} sent" if sent is not None else ""
    if version["created"]:
        out.print(f"imported [bold]{version['ref']}[/bold] ({human_size(version['size'])}, "
                  f"{human_size(version['new_bytes'])} new{wire}) in {took:.1f}s; tags: "
                  f"{', '.join(version['tags']) or 'none'}", soft_wrap=True)
    else:
        out.print(f"unchanged: the same files are [bold]{version['ref']}[/bold] already "
                  f"(tags: {', '.join(version['tags'])}); no new bytes stored{wire}",
                  soft_wrap=True)


# reading -------------------------------------------------------------------------------

@models_app.command("ls")
def list_models(project: ProjectOption = "default", output: OutputOption = None,
                as_json: JsonOption = False, quiet: QuietOption = False,
                url: UrlOption = None) -> None:
    """Every version in the project (``-q``: their references, ``name@N``)."""
    fmt = chosen(output, as_json)
    versions = call_api("GET", server_url(url), "/api/models",
                        params={"project": project})["data"]
    if not versions and fmt in ("table", "plain") and not quiet:
        err.print(f"no models in project {project!r}; add one with `llmos models import`")
        return
    listing = Listing(("MODEL", "TAGS", "SIZE", "WEIGHTS", "CREATED"))
    for v in versions:
        meta = v["metadata"]
        weights = " ".join(x for x in (meta.get("architecture"), meta.get("quantization"),
                                       human_count(meta.get("parameter_count", 0))) if x)
        listing.add(v["ref"], ",".join(v["tags"]), human_size(v["size"]), weights,
                    datetime.fromtimestamp(v["created_at"]).strftime("%Y-%m-%d %H:%M"))
    show(versions, [listing], fmt, quiet)


@models_app.command("show")
def show_model(ref: Annotated[str, typer.Argument(help="name, name:tag, name@N, name@sha256:…")],
               project: ProjectOption = "default", url: UrlOption = None,
               output: OutputOption = None, as_json: JsonOption = False,
               slots: Annotated[int | None, typer.Option(
                   help="estimate memory for this many slots")] = None,
               ctx_size: Annotated[int | None, typer.Option(
                   help="… and this total context")] = None,
               kv_type: Annotated[str | None, typer.Option(
                   help="… and this KV cache type (f16, q8_0, q4_0)")] = None,
               ) -> None:
    """One version: files, metadata, resource estimate and lineage."""
    base = server_url(url)
    lineage = call_api("GET", base, f"/api/models/{_path(ref)}/lineage",
                       params={"project": project})
    v = lineage["version"]
    asked = {k: x for k, x in (("slots", slots), ("ctx_size", ctx_size),
                               ("kv_type", kv_type)) if x is not None}
    if asked:
        v["estimate"] = call_api("GET", base, f"/api/models/{_path(v['ref'])}/estimate",
                                 params={"project": project, **asked})
    fmt = chosen(output, as_json)
    if data(lineage, fmt):
        return
    out.print(f"[bold]{v['ref']}[/bold]  tags: {', '.join(v['tags']) or 'none'}")
    created = datetime.fromtimestamp(v["created_at"]).isoformat(timespec="seconds")
    out.print(f"created {created} by {v['creator'] or 'unknown'}"
              + (f"  label: {v['label']}" if v["label"] else ""))
    if v["derived_from"]:
        out.print(f"derived from {v['derived_from']} ({v['relation']})")
    if v.get("engine"):
        out.print(f"engine: {v['engine']}; serves: {', '.join(v.get('capabilities') or [])}")
    template = v.get("chat_template") or {}
    if template:
        sources = {"file": "a file stored with the version", "gguf": "the GGUF's own",
                   "family": "built-in, for its architecture's family",
                   "fallback": "llama.cpp's fallback"}
        out.print(f"chat template: {template['name']} "
                  f"({sources.get(template['source'], template['source'])})")
        if template.get("warning"):
            out.print(f"[yellow]{template['warning']}[/yellow]")
    files = Listing(("FILE", "TYPE", "SIZE", "DIGEST"), title="files")
    for b in v["blobs"]:
        files.add(b["filename"], b["media_type"], human_size(b["size"]), b["digest"])
    table(files, fmt)
    if v["metadata"]:
        meta = Listing(("KEY", "VALUE"), title="metadata")
        for key, value in v["metadata"].items():
            meta.add(key, str(value))
        table(meta, fmt)
    estimate = v.get("estimate")
    if estimate:
        memory = Listing(("PART", "SIZE"), title="memory of one replica (" + ", ".join(
            f"{k}={estimate[k]}" for k in ("slots", "ctx_size", "kv_type") if k in estimate)
            + ")")
        notes = {"loaded": "what to find room for", "prompt_cache": "grows with use, to",
                 "total": "loaded + a full prompt cache"}
        for key, value in estimate.items():
            if key.endswith("_bytes"):
                part = key.removesuffix("_bytes")
                label = f"{part} ({notes[part]})" if part in notes else part
                memory.add(label, human_size(value))
        table(memory, fmt)
    for title, key in (("ancestors", "ancestors"), ("descendants", "descendants")):
        if lineage[key]:
            out.print(f"{title}: " + ", ".join(
                f"{a['ref']} ({a['relation'] or 'base'})" for a in lineage[key]))


# changing ------------------------------------------------------------------------------

@models_app.command("tag")
def tag_model(ref: Annotated[str, typer.Argument(help="the version to tag")],
              tag: Annotated[str, typer.Argument(help="tag, e.g. prod")],
              project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Point TAG at the version REF names (moving it from another version)."""
    v = call_api("PUT", server_url(url), f"/api/models/{_path(ref)}/tags/{quote(tag)}",
                 params={"project": project})
    out.print(f"{v['name']}:{tag} -> {v['ref']}")


@models_app.command("untag")
def untag_model(ref: Annotated[str, typer.Argument(help="name:tag")],
                project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Remove a tag; the version stays."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "@" in ref:
        err.print(f"[red]error:[/red] untag takes name:tag, not {ref!r}")
        raise typer.Exit(code=2)
    v = call_api("DELETE", server_url(url), f"/api/models/{_path(name)}/tags/{quote(tag)}",
                 params={"project": project})
    out.print(f"removed {ref} (was {v['ref']})")


@models_app.command("rm")
def remove_model(ref: Annotated[str, typer.Argument(help="the version to delete")],
                 project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Delete a version and its tags (refused while a deployment uses it)."""
    v = call_api("DELETE", server_url(url), f"/api/models/{_path(ref)}",
                 params={"project": project})
    out.print(f"deleted {v['ref']}; `llmos models gc` frees blobs no other version uses")


@models_app.command("gc")
def collect_garbage(
    grace_s: Annotated[float, typer.Option(
        help="keep unused blobs younger than this many seconds (uploads in progress)")
    ] = 3600.0, url: UrlOption = None) -> None:
    """Remove blobs no version uses, stale partial files and orphaned folders."""
    r = call_api("POST", server_url(url), "/api/registry/gc", params={"grace_s": grace_s},
                 timeout=600)
    out.print(f"removed {r['blobs']} blobs ({human_size(r['bytes'])}), {r['parts']} partial "
              f"files, {r['folders']} folders")


@models_app.command("verify")
def verify_models(
    ref: Annotated[str | None, typer.Argument(help="one version (default: all)")] = None,
    project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Re-hash blobs against their digests; exit 1 if any is missing or corrupt."""
    base = server_url(url)
    params = {"project": project} | ({"ref": ref} if ref else {})
    result: dict[str, Any] = {}
    try:
        with httpx.stream("POST", f"{base}/api/registry/verify", params=params,
                          headers=auth_headers(),
                          timeout=httpx.Timeout(3600, connect=5)) as response, \
                _progress() as progress:
            if response.status_code >= 400:
                response.read()
                raise api_error(response)
            task = progress.add_task("verifying", total=None)
            for line in response.iter_lines():
                event = json.loads(line)
                if "checked" in event:
                    progress.update(task, completed=event["checked"], total=event["total"])
                else:
                    result = event
    except httpx.ConnectError:
        raise no_server(base) from None
    if "error" in result:
        err.print(f"[red]error:[/red] {result['error']}")
        raise typer.Exit(code=2)
    problems = result.get("problems", [])
    for p in problems:
        err.print(f"[red]{p['ref']}[/red] {p['digest'][:19]}: {p['problem']}")
    if problems:
        raise typer.Exit(code=1)
    out.print("all blobs match their digests")


# between registries ------------------------------------------------------------------

def _copy(source_url: str, target_url: str, ref: str, project: str) -> None:
    from llmos.cli.transfer import TransferError, copy_version

    timeout = httpx.Timeout(600, connect=5)
    tasks: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with http_client(source_url, timeout) as source, \
                http_client(target_url, timeout) as target, \
                _progress() as progress:

            def show(filename: str, done: int, total: int) -> None:
                if filename not in tasks:
                    tasks[filename] = progress.add_task(filename, total=total)
                progress.update(tasks[filename], completed=done)

            copied = copy_version(source, target, ref, project=project, progress=show)
    except httpx.ConnectError as exc:
        err.print(f"[red]error:[/red] cannot reach {exc.request.url.host}:"
                  f"{exc.request.url.port}: is an LLMOS server running there?")
        raise typer.Exit(code=2) from None
    except TransferError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=1) from None
    v = copied.version
    note = f", resumed from {human_size(copied.resumed_from)}" if copied.resumed_from else ""
    out.print(f"{ref} -> {target_url} as [bold]{v['ref']}[/bold]: sent "
              f"{human_size(copied.sent_bytes)}, {copied.skipped_blobs} of {len(v['blobs'])} "
              f"blobs there already{note} ({time.monotonic() - started:.1f}s)", soft_wrap=True)


@models_app.command("push")
def push_model(ref: Annotated[str, typer.Argument(help="the version to copy")],
               to: Annotated[str, typer.Option("--to", help="the LLMOS server to copy to, "
                                                           "e.g. http://gpu-2:8000")],
               project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Copy a version from this server's registry to another's (resumable, verified)."""
    _copy(server_url(url), to.rstrip("/"), ref, project)


@models_app.command("pull")
def pull_model(ref: Annotated[str, typer.Argument(help="the version to copy")],
               from_: Annotated[str, typer.Option("--from", help="the LLMOS server to copy "
                                                                "from, e.g. http://hub:8000")],
               project: ProjectOption = "default", url: UrlOption = None) -> None:
    """Copy a version from another server's registry into this server's."""
    _copy(from_.rstrip("/"), server_url(url), ref, project)
