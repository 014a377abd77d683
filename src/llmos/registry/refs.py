"""Repository names and references: ``name``, ``name:tag``, ``name@3``, ``name@sha256:…``;
and the projects repositories live in."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmos.errors import BadRequest, excerpt

_COMPONENT = r"[a-z0-9][a-z0-9._-]{0,127}"  # (a file name on disk: at most 255 bytes)
NAME_PATTERN = rf"^(?:{_COMPONENT}/)?{_COMPONENT}$"
TAG_PATTERN = rf"^{_COMPONENT}$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
REF_PATTERN = (rf"^(?:{_COMPONENT}/)?{_COMPONENT}"
               rf"(?::{_COMPONENT}|@[0-9]{{1,9}}|@sha256:[0-9a-f]{{64}})?$")
"""The patterns also go into the API's schema (as path and query parameter patterns)."""
NAME_RE = re.compile(NAME_PATTERN)
TAG_RE = re.compile(TAG_PATTERN)
DIGEST_RE = re.compile(DIGEST_PATTERN)
RESERVED = frozenset({"lineage", "estimate", "tags", "versions"})
"""Words the API's paths use after a name: a name cannot end with one."""
DEFAULT_PROJECT = "default"
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
PROJECT_RE = re.compile(PROJECT_PATTERN)
PROJECT_RULE = ("a project name is at most 64 lowercase ASCII letters, digits, '-' and '_', "
                "starting with a letter or digit")
NAME_RULE = ("a model name is [namespace/]name of lowercase letters, digits, '-', '.' and '_', "
             "starting with a letter or digit, each part at most 128 characters, and not "
             "ending in /lineage, /estimate, /tags or /versions")


@dataclass(frozen=True)
class ModelRef:
    name: str
    tag: str | None = None
    version: int | None = None
    digest: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"


def check_name(name: str) -> str:
    # (no part starts with '.', so '..' can never be a path step)
    if not NAME_RE.fullmatch(name) or name.rsplit("/", 1)[-1] in RESERVED:
        raise BadRequest(f"invalid model name {excerpt(name)}: {NAME_RULE}", param="name")
    return name


def check_project(project: str) -> str:
    if not PROJECT_RE.fullmatch(project):  # ASCII only: 'é'.islower() is True
        raise BadRequest(f"invalid project {excerpt(project)}: {PROJECT_RULE}",
                         param="project")
    return project


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise BadRequest(f"invalid tag {excerpt(tag)}: at most 128 lowercase letters, digits, "
                         "'-', '.' and '_'",
                         param="tag")
    return tag


def check_digest(digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise BadRequest(f"invalid digest {digest[:80]!r}: sha256: and 64 lowercase hex digits",
                         param="digest")
    return digest


def parse_ref(ref: str) -> ModelRef:
    if "@" in ref:
        name, _, at = ref.partition("@")
        check_name(name)
        if at.isdigit() and len(at) <= 9:
            return ModelRef(name, version=int(at))
        if DIGEST_RE.fullmatch(at):
            return ModelRef(name, digest=at)
        raise BadRequest(f"invalid reference {excerpt(ref)}: after '@' comes a version number or "
                         "sha256:<64 hex digits>", param="model")
    name, sep, tag = ref.partition(":")
    check_name(name)
    return ModelRef(name, tag=check_tag(tag) if sep else None)
