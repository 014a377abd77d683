"""Copy a model version from one LLMOS registry to another, over their HTTP APIs.

As with container registries: every blob the target lacks goes through a resumable
upload session (a cut copy resumes from the bytes the target kept), each blob is
checked against its digest by the target, and the manifest goes last, so a
half-copied version is never visible. Blobs the target has are not sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

_CHUNK = 8 << 20
Progress = Callable[[str, int, int], None]
"""(filename, bytes done, bytes in all) after each piece."""


class TransferError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UploadBusy(TransferError):
    """The target's upload session is held by another request (a cut one, still there)."""


_BUSY_TRIES = 20

@dataclass(frozen=True)
class Copied:
    version: dict[str, Any]
    sent_bytes: int
    """Blob bytes that went to the target this time."""
    skipped_blobs: int
    """Blobs the target had already (nothing sent)."""
    resumed_from: int
    """Bytes of unfinished uploads the target had kept from an earlier try."""


def _check(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300] or response.reason_phrase
        raise TransferError(f"{what}: {response.status_code} {message}")
    return response.json() if response.content else None


def copy_version(source: httpx.Client, target: httpx.Client, ref: str, *,
                 project: str = "default", target_project: str | None = None,
                 progress: Progress | None = None) -> Copied:
    """Copy the version ``ref`` names from ``source`` to ``target``."""
    into = target_project or project
    version = _check(source.get(f"/api/models/{quote(ref, safe='/:@')}",
                                params={"project": project}), f"{source.base_url}: {ref}")
    sent = skipped = resumed = 0
    files = []
    for blob in version["blobs"]:
        digest, size, filename = blob["digest"], blob["size"], blob["filename"]
        files.append({"filename": filename, "digest": digest})
        if target.head(f"/api/blobs/{digest}").status_code == 200:
            skipped += 1
            if progress is not None:
                progress(filename, size, size)
            continue
        for attempt in range(_BUSY_TRIES):
            upload = _check(target.post("/api/uploads", json={
                "digest": digest, "size": size, "filename": filename}),
                f"{target.base_url}: opening an upload of {filename}")
            offset = upload["offset"]
            if offset >= size:
                break
            try:
                sent += _send(source, target, upload["id"], digest, filename, offset, size,
                              progress)
                break
            except UploadBusy:
                # a cut copy's request may still hold the session on the target until it
                # notices its client has gone: ask again in a moment, from its offset then
                if attempt == _BUSY_TRIES - 1:
                    raise
                time.sleep(0.5)
        resumed += offset  # what the target had kept when this copy went on
        _check(target.post(f"/api/uploads/{upload['id']}/finish"),
               f"{target.base_url}: checking {filename}")
    parent = _same_version_on(target, source, version.get("derived_from"), project, into)
    tag = ref.split("@")[0].partition(":")[2] or None
    created = _check(target.post(
        f"/api/models/{quote(version['name'], safe='/')}/versions", params={"project": into},
        json={"files": files, "tag": tag, "label": version.get("label"),
              "derived_from": parent, "relation": version.get("relation") if parent else None,
              "creator": version.get("creator")}), f"{target.base_url}: creating the version")
    return Copied(created, sent, skipped, resumed)


def _same_version_on(target: httpx.Client, source: httpx.Client, ref: str | None,
                     project: str, into: str) -> str | None:
    """The target's version with the same files as the source's ``ref`` (numbers differ
    between registries), or None: then the copy's lineage ends there."""
    if not ref:
        return None
    theirs = source.get(f"/api/models/{quote(ref, safe='/:@')}", params={"project": project})
    if theirs.status_code != 200 or not theirs.json()["blobs"]:
        return None
    wanted = theirs.json()
    files = {(b["digest"], b["filename"]) for b in wanted["blobs"]}
    match = target.get(f"/api/models/{quote(wanted['name'], safe='/')}@"
                       f"{wanted['blobs'][0]['digest']}", params={"project": into})
    if match.status_code != 200:
        return None
    found = match.json()
    same = {(b["digest"], b["filename"]) for b in found["blobs"]} == files
    return str(found["ref"]) if same else None


def _send(source: httpx.Client, target: httpx.Client, upload_id: str, digest: str,
          filename: str, offset: int, size: int, progress: Progress | None) -> int:
    """Stream the blob from ``offset`` out of the source into the target's session."""
    sent = 0
    headers = {"range": f"bytes={offset}-"} if offset else {}
    with source.stream("GET", f"/api/blobs/{digest}", headers=headers) as response:
        if response.status_code not in (200, 206):
            response.read()
            _check(response, f"{source.base_url}: reading {filename}")
        if offset and response.status_code != 206:
            raise TransferError(f"{source.base_url} ignored the Range of a resumed copy")

        def body() -> Iterator[bytes]:
            nonlocal sent
            for piece in response.iter_bytes(_CHUNK):
                sent += len(piece)
                if progress is not None:
                    progress(filename, offset + sent, size)
                yield piece

        answer = target.patch(f"/api/uploads/{upload_id}", params={"offset": offset},
                              content=body(), headers={
                                  "content-type": "application/octet-stream",
                                  "content-length": str(size - offset)})
        if answer.status_code == 409 and "being sent by another client" in answer.text:
            raise UploadBusy(f"{target.base_url}: upload {upload_id} is busy")
        _check(answer, f"{target.base_url}: sending {filename}")
    return sent
