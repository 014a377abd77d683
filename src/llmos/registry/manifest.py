"""What a model version is: its blobs, where it came from, and what its weights say.

A manifest is written once, as JSON, when its version is created, and never
changed; tags live beside it and move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MANIFEST_SCHEMA = 1

GGUF_MEDIA_TYPE = "application/vnd.llmos.gguf"
ADAPTER_MEDIA_TYPE = "application/vnd.llmos.adapter.gguf"
TOKENIZER_MEDIA_TYPE = "application/vnd.llmos.tokenizer"
LICENSE_MEDIA_TYPE = "text/vnd.llmos.license"
README_MEDIA_TYPE = "text/markdown"
TEMPLATE_MEDIA_TYPE = "text/vnd.llmos.chat-template"
"""A Jinja chat template stored with a version (``*.jinja``): see ``templates.py``."""
OTHER_MEDIA_TYPE = "application/octet-stream"

RELATIONS = ("quantization", "fine-tune", "adapter", "derived")
"""How a version relates to the one it is ``derived_from``."""


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str
    filename: str

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type,
                "filename": self.filename}


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    project: str
    created_at: float
    blobs: tuple[Blob, ...]
    label: str | None = None
    derived_from: str | None = None
    """``name@N`` of the version this one was made from, in the same project."""
    relation: str | None = None
    creator: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the GGUF header says: architecture, sizes, layout (see ``metadata.py``)."""
    config: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, Any] | None = None
    """Memory a replica needs under the default engine settings (see ``estimate.py``)."""
    tags: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    def to_dict(self, *, with_tags: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA, "name": self.name, "version": self.version,
            "project": self.project, "created_at": self.created_at,
            "blobs": [b.to_dict() for b in self.blobs], "label": self.label,
            "derived_from": self.derived_from, "relation": self.relation,
            "creator": self.creator, "metadata": self.metadata, "config": self.config,
            "estimate": self.estimate}
        if with_tags:
            data["tags"] = list(self.tags)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], tags: tuple[str, ...] = ()) -> ModelVersion:
        return cls(
            name=data["name"], version=int(data["version"]), project=data["project"],
            created_at=float(data["created_at"]),
            blobs=tuple(Blob(**b) for b in data["blobs"]), label=data.get("label"),
            derived_from=data.get("derived_from"), relation=data.get("relation"),
            creator=data.get("creator"), metadata=dict(data.get("metadata") or {}),
            config=dict(data.get("config") or {}), estimate=data.get("estimate"), tags=tags)
