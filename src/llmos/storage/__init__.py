"""Object storage for the registry: local directory, S3, Azure Blob, GCS (obstore)."""

from llmos.storage.base import ObjectExists, ObjectInfo, ObjectStorage, StorageError
from llmos.storage.objects import KNOWN_SCHEMES, open_storage

__all__ = ["KNOWN_SCHEMES", "ObjectExists", "ObjectInfo", "ObjectStorage", "StorageError",
           "open_storage"]
