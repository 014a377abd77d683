"""Every object storage backend through one library: obstore (Rust ``object_store``).

URLs::

    file:///var/lib/llmos/models            a local directory
    memory://                               in this process only (tests)
    s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1
    az://container/prefix?account=NAME[&endpoint=http://127.0.0.1:10000/NAME]
    gs://bucket/prefix

Credentials come from the usual environment variables, never from the URL:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``…), ``AZURE_STORAGE_ACCOUNT_KEY`` (or a SAS token, a service
principal…), ``GOOGLE_APPLICATION_CREDENTIALS``/``GOOGLE_SERVICE_ACCOUNT``.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from llmos.errors import ConfigError
from llmos.storage.base import ObjectExists, ObjectInfo, ObjectStorage, StorageError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

_QUERY_KEYS = {
    "s3": {"endpoint", "region"},
    "az": {"account", "endpoint"},
    "gs": set(),
    "file": set(),
    "memory": set(),
}
_SCHEMES = {"s3": "s3", "az": "az", "azure": "az", "abfs": "az", "gs": "gs", "gcs": "gs",
            "file": "file", "memory": "memory"}
_NAMES = {"s3": "S3", "az": "Azure Blob", "gs": "Google Cloud Storage",
          "file": "the local directory", "memory": "memory storage"}
_CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_SESSION_TOKEN / "
          "AWS_PROFILE) for this bucket",
    "az": "set AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, or a service "
          "principal's AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file",
    "file": "check the directory's owner and permissions",
    "memory": "",
}
KNOWN_SCHEMES = sorted(_SCHEMES)


def open_storage(url: str) -> ObjectStorage:
    """The storage a URL names; an unknown scheme or option is a ConfigError."""
    parts = urlsplit(url)
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        raise ConfigError(f"unknown storage URL {url!r}: the scheme is one of "
                          f"{', '.join(s + '://' for s in KNOWN_SCHEMES)}")
    query = dict(parse_qsl(parts.query))
    unknown = set(query) - _QUERY_KEYS[kind]
    if unknown:
        known = ", ".join(sorted(_QUERY_KEYS[kind])) or "none"
        raise ConfigError(f"unknown option {', '.join(sorted(unknown))} in storage URL "
                          f"{_public_url(url)}; the options of {parts.scheme}:// are: {known}")
    return ObstoreStorage(kind, url, _build(kind, parts.netloc, parts.path, query))


def _public_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()


def _retry() -> RetryConfig:
    # Fail within seconds on a wrong endpoint, instead of object_store's 10 tries / 3 min.
    return {"max_retries": 3, "retry_timeout": datetime.timedelta(seconds=30),
            "backoff": {"init_backoff": datetime.timedelta(milliseconds=100),
                        "max_backoff": datetime.timedelta(seconds=5), "base": 2}}


def _build(kind: str, netloc: str, path: str, query: dict[str, str]) -> Any:
    from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

    prefix = path.strip("/") or None
    endpoint = query.get("endpoint")
    client: ClientConfig = {"connect_timeout": datetime.timedelta(seconds=5)}
    if endpoint and endpoint.startswith("http://"):
        client["allow_http"] = True
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        if netloc not in ("", "localhost"):
            raise ConfigError(f"file:// storage is on this machine: file:///absolute/path, "
                              f"not file://{netloc}/…")
        Path(path).mkdir(parents=True, exist_ok=True)
        return LocalStore(path, mkdir=True)
    if not netloc:
        raise ConfigError(f"{kind}:// storage needs a bucket or container: "
                          f"{kind}://NAME/prefix")
    if kind == "s3":
        options: dict[str, Any] = {}
        if endpoint:
            options["endpoint"] = endpoint
        if "region" in query:
            options["region"] = query["region"]
        return S3Store(netloc, prefix=prefix, client_options=client, retry_config=_retry(),
                       **options)
    if kind == "az":
        options = {"account_name": query["account"]} if "account" in query else {}
        if endpoint:
            options["endpoint"] = endpoint
        return AzureStore(netloc, prefix=prefix, client_options=client,
                          retry_config=_retry(), **options)
    return GCSStore(netloc, prefix=prefix, client_options=client, retry_config=_retry())


class ObstoreStorage(ObjectStorage):
    def __init__(self, kind: str, url: str, store: Any) -> None:
        self.scheme = kind
        self.url = _public_url(url)
        self.name = _NAMES[kind]
        self._store = store

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            raise self._translate(what, exc) from exc

    def _translate(self, what: str, exc: Exception) -> StorageError:
        from obstore.exceptions import (
            AlreadyExistsError,
            PermissionDeniedError,
            PreconditionError,
            UnauthenticatedError,
        )

        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if isinstance(exc, AlreadyExistsError | PreconditionError):
            return ObjectExists(f"{what}: it exists already in {self.name} at {self.url}")
        for code in ("NoSuchBucket", "ContainerNotFound"):
            if code in text:
                kind = "bucket" if code == "NoSuchBucket" else "container"
                return StorageError(f"{self.name} at {self.url}: the {kind} does not exist; "
                                    f"create it, or fix the URL")
        # Unreachable first: the text names the endpoint, whose port may hold "401".
        if "error sending request" in text or "Connection refused" in text or (
                "connect" in text.lower() and "timed out" in text.lower()):
            return StorageError(f"cannot reach {self.name} at {self.url} ({what}); check the "
                                "endpoint and that the service is up")
        auth = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "AuthenticationFailed", "AuthorizationFailure", "ExpiredToken")
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or any(
                a in text for a in auth) or re.search(r"(?<![\d.:])40[13](?![\d.])", text):
            return StorageError(f"{self.name} at {self.url} refused the credentials "
                                f"({what}): {_CREDENTIALS[self.scheme]}")
        return StorageError(f"{self.name} at {self.url}: {what} failed: {first[:300]}")

    def put(self, path: str, data: bytes, *, create: bool = False) -> None:
        import obstore

        self._call(f"writing {path}", lambda: obstore.put(
            self._store, path, data, mode="create" if create else "overwrite",
            use_multipart=False))

    def get(self, path: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get(self._store, path).bytes())
        except (NotFoundError, FileNotFoundError) as exc:
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                raise self._translate(f"reading {path}", exc) from exc
            return None
        except Exception as exc:
            raise self._translate(f"reading {path}", exc) from exc

    def get_range(self, path: str, start: int, end: int) -> bytes:
        import obstore

        return bytes(self._call(f"reading {path}", lambda: obstore.get_range(
            self._store, path, start=start, end=end)))

    def head(self, path: str) -> ObjectInfo | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            meta = obstore.head(self._store, path)
        except (NotFoundError, FileNotFoundError) as exc:
            if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
                raise self._translate(f"looking up {path}", exc) from exc
            return None
        except Exception as exc:
            raise self._translate(f"looking up {path}", exc) from exc
        return _info(meta)

    def list(self, prefix: str) -> list[ObjectInfo]:
        import obstore

        def run() -> list[ObjectInfo]:
            found = [_info(meta) for batch in obstore.list(self._store, prefix or None)
                     for meta in batch]
            return sorted(found, key=lambda i: i.path)
        return self._call(f"listing {prefix or '/'}", run)

    def delete(self, path: str) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.delete(self._store, path)
        except (NotFoundError, FileNotFoundError):
            pass
        except Exception as exc:
            raise self._translate(f"deleting {path}", exc) from exc


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(path=str(meta["path"]), size=int(meta["size"]),
                      modified=meta["last_modified"].timestamp())
