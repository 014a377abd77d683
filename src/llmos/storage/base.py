"""Object storage: the few operations the registry needs, the same on every backend.

A path is ``/``-separated and relative to the storage's root (its bucket and
prefix). Writes of one object are atomic: a reader sees all of it or nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from llmos.errors import LLMOSError


class StorageError(LLMOSError):
    """An object storage call failed; the message names the backend and the fix."""

    status = 502
    type = "server_error"
    code = "storage_error"


class ObjectExists(StorageError):
    status = 409
    code = "object_exists"


@dataclass(frozen=True)
class ObjectInfo:
    path: str
    size: int
    modified: float
    """Unix time of the last write."""


class ObjectStorage(ABC):
    scheme: str
    url: str
    """Where it is, without credentials (safe to log)."""

    @abstractmethod
    def put(self, path: str, data: bytes, *, create: bool = False) -> None:
        """Write an object; with ``create``, raise ``ObjectExists`` if it is there."""

    @abstractmethod
    def get(self, path: str) -> bytes | None:
        """The whole object, or None when there is none."""

    @abstractmethod
    def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``start`` (inclusive) to ``end`` (exclusive) of an object."""

    @abstractmethod
    def head(self, path: str) -> ObjectInfo | None:
        """Size and time of an object, or None."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under the folder-like ``prefix`` (recursively), sorted by path."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove an object; no error if it is gone already."""
