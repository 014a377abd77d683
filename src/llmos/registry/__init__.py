"""Model repositories: immutable versions, tags and content-addressed blobs."""

from llmos.registry.local import Imported, LocalRegistry
from llmos.registry.manifest import Blob, ModelVersion
from llmos.registry.refs import ModelRef, parse_ref

__all__ = ["Blob", "Imported", "LocalRegistry", "ModelRef", "ModelVersion", "parse_ref"]
