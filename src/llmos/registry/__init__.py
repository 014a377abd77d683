"""Model repositories: immutable versions, tags and content-addressed blobs."""

from llmos.registry.local import LocalRegistry, ModelVersion
from llmos.registry.refs import ModelRef, parse_ref

__all__ = ["LocalRegistry", "ModelRef", "ModelVersion", "parse_ref"]
