"""Which chat template a model version is served with, and where it comes from.

The first of these that exists wins:

1. ``deployment``: the deployment's ``chat_template`` engine setting, a built-in name
   (``gemma``, ``chatml``) or a Jinja template;
2. ``file``: a template file stored with the version (``*.jinja``);
3. ``gguf``: the GGUF's own ``tokenizer.chat_template``;
4. ``family``: the built-in template of the architecture's family (Gemma 1-3 →
   ``gemma``), for GGUFs that carry none (the default model's does not);
5. ``fallback``: ChatML, what llama.cpp itself falls back to; a model not trained on
   it sees its markers as plain text, so this is said wherever the template is shown.

Templates are rendered by llama.cpp's own Jinja engine in the worker; nothing here
renders one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from llmos.errors import BadRequest
from llmos.registry.manifest import TEMPLATE_MEDIA_TYPE, ModelVersion

BUILTIN = ("chatml", "gemma")
"""Templates LLMOS ships (``registry/chat_templates/NAME.jinja``)."""
FAMILIES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}
"""GGUF ``general.architecture`` -> the built-in template of its family."""
FALLBACK = "chatml"
MAX_TEMPLATE_CHARS = 64 * 1024
"""A deployment's template travels to ``llmos worker`` in its environment (one variable
holds at most 128 KiB on Linux); real templates are a few KiB."""

Source = Literal["deployment", "file", "gguf", "family", "fallback"]


@dataclass(frozen=True)
class ChatTemplate:
    source: Source
    name: str
    """The built-in's name, the file's name, ``gguf`` or ``custom`` (a deployment's
    own Jinja)."""
    text: str | None
    """The Jinja source to hand llama.cpp; None: the GGUF's own (llama.cpp reads it)."""

    def describe(self) -> dict[str, Any]:
        """What the API and the CLI show."""
        out: dict[str, Any] = {"source": self.source, "name": self.name}
        if self.text is not None:
            out["sha256"] = hashlib.sha256(self.text.encode()).hexdigest()
        if self.source == "fallback":
            out["warning"] = ("no chat template found for this model; llama.cpp's ChatML "
                              "fallback is used, whose markers a model not trained on them "
                              "reads as plain text: set the deployment's chat_template")
        return out


def is_jinja(value: str) -> bool:
    return "{{" in value or "{%" in value


def check_override(value: str) -> str:
    """A deployment's ``chat_template``: a built-in name or a Jinja template."""
    if value in BUILTIN or is_jinja(value):
        if len(value) > MAX_TEMPLATE_CHARS:
            raise BadRequest(f"chat_template is longer than {MAX_TEMPLATE_CHARS} characters",
                             param="chat_template")
        return value
    raise BadRequest(f"chat_template {value[:40]!r} is neither a built-in template "
                     f"({', '.join(BUILTIN)}) nor a Jinja template", param="chat_template")


def builtin(name: str) -> str:
    return (resources.files("llmos.registry") / "chat_templates" / f"{name}.jinja"
            ).read_text(encoding="utf-8")


def template_file(version: ModelVersion) -> str | None:
    """The name of the version's template file, if it has one."""
    return next((b.filename for b in version.blobs if b.media_type == TEMPLATE_MEDIA_TYPE),
                None)


def choose(version: ModelVersion, override: str | None = None, *,
           files: Path | None = None) -> ChatTemplate:
    """The template ``version`` is served with under ``override``; its text is read
    (from ``files``, the version's materialized folder, for a stored file) only when
    ``files`` is given or it needs no file."""
    if override:
        if override in BUILTIN:
            return ChatTemplate("deployment", override, builtin(override))
        return ChatTemplate("deployment", "custom", check_override(override))
    stored = template_file(version)
    if stored is not None:
        text = (files / stored).read_text(encoding="utf-8") if files is not None else None
        return ChatTemplate("file", stored, text)
    if version.metadata.get("chat_template_sha256"):
        return ChatTemplate("gguf", "gguf", None)
    family = FAMILIES.get(str(version.metadata.get("architecture")))
    if family is not None:
        return ChatTemplate("family", family, builtin(family))
    return ChatTemplate("fallback", FALLBACK, builtin(FALLBACK))
