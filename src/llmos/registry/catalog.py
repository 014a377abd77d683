"""Which versions and tags a registry holds: manifests, tags and tombstones, kept as
objects in a storage (the registry's directory, or a bucket that nodes share).

Layout::

    repos/<project>/<name>/_versions/<version>.json   a manifest, written once
    repos/<project>/<name>/_tags/<tag>                the version number a tag names
    repos/<project>/<name>/_deleted/<version>         a deleted version's tombstone

A manifest is written create-only, so two writers (two nodes) never take the same
number; a tombstone keeps a deleted version's number from being given again.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time

from llmos.errors import NotFound, RegistryError
from llmos.registry.manifest import ModelVersion
from llmos.registry.refs import DEFAULT_PROJECT, ModelRef, check_name, check_project, parse_ref
from llmos.storage import ObjectExists, ObjectStorage


class Catalog:
    def __init__(self, meta: ObjectStorage) -> None:
        self.meta = meta

    # reading -----------------------------------------------------------------------

    def get(self, ref: ModelRef | str, *, project: str = DEFAULT_PROJECT) -> ModelVersion:
        """The version a reference names: by number, by a blob's digest, or by tag
        (``latest`` when it names none)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        check_project(project)
        if ref.version is not None:
            number = ref.version
        elif ref.digest is not None:
            match = [v for v in self.versions(ref.name, project=project)
                     if any(b.digest == ref.digest for b in v.blobs)]
            if not match:
                raise NotFound(f"model {ref} not found")
            return match[-1]
        else:
            raw = self.meta.get(_tag_key(project, ref.name, ref.tag or "latest"))
            if raw is None:
                known = self._numbers(project, ref.name)
                hint = (f"; it has versions {', '.join(map(str, known))}" if known
                        else "; import it with `llmos models import`")
                raise NotFound(f"model {ref} not found{hint}")
            number = int(raw)
        return self._read(project, ref.name, number)

    def versions(self, name: str, *, project: str = DEFAULT_PROJECT) -> list[ModelVersion]:
        check_name(name)
        numbers = self._numbers(project, name)
        tags = self.tags(name, project=project) if numbers else {}  # (read once for all)
        return [self._read(project, name, n, tags) for n in numbers]

    def tags(self, name: str, *, project: str = DEFAULT_PROJECT) -> dict[str, int]:
        """Each tag of a repository and the version number it names."""
        prefix = f"repos/{project}/{name}/_tags/"
        tags: dict[str, int] = {}
        for info in self.meta.list(prefix.rstrip("/")):
            tag = info.path.removeprefix(prefix)
            raw = self.meta.get(info.path) if "/" not in tag else None
            with contextlib.suppress(ValueError):
                if raw is not None and not tag.startswith("."):
                    tags[tag] = int(raw)
        return tags

    def projects(self) -> list[str]:
        return sorted({i.path.split("/")[1] for i in self.meta.list("repos")
                       if i.path.count("/") >= 4})

    def list(self, *, project: str = DEFAULT_PROJECT) -> list[ModelVersion]:
        prefix = f"repos/{check_project(project)}/"
        names = sorted({i.path.removeprefix(prefix).rsplit("/_versions/", 1)[0]
                        for i in self.meta.list(prefix.rstrip("/"))
                        if "/_versions/" in i.path and i.path.endswith(".json")})
        return [v for n in names for v in self.versions(n, project=project)]

    def all_versions(self) -> builtins.list[ModelVersion]:
        """Every version of every project."""
        return [v for p in self.projects() for v in self.list(project=p)]

    def next_number(self, project: str, name: str) -> int:
        """The number a new version of ``name`` tries first: after every one that ever was."""
        return max([*self._numbers(project, name), *self._deleted(project, name)],
                   default=0) + 1

    # writing -----------------------------------------------------------------------

    def add(self, version: ModelVersion) -> bool:
        """Write a new version's manifest; False when its number was taken meanwhile."""
        key = _manifest_key(version.project, version.name, version.version)
        try:
            self.meta.put(key, json.dumps(version.to_dict(with_tags=False), indent=2).encode(),
                          create=True)
        except ObjectExists:
            return False
        return True

    def set_tag(self, project: str, name: str, tag: str, version: int) -> None:
        self.meta.put(_tag_key(project, name, tag), str(version).encode())

    def drop_tag(self, project: str, name: str, tag: str) -> None:
        self.meta.delete(_tag_key(project, name, tag))

    def remove(self, version: ModelVersion) -> None:
        """Forget a version: its tags, then a tombstone (its number is never given to
        another version, whose files a cache or a ``derived_from`` elsewhere could take
        for this one's), then its manifest."""
        for tag in version.tags:
            self.drop_tag(version.project, version.name, tag)
        self.meta.put(f"repos/{version.project}/{version.name}/_deleted/{version.version}",
                      json.dumps({"deleted_at": time.time()}).encode())
        self.meta.delete(_manifest_key(version.project, version.name, version.version))

    # the objects -------------------------------------------------------------------

    def _numbers(self, project: str, name: str) -> builtins.list[int]:
        prefix = f"repos/{project}/{name}/_versions/"
        numbers = []
        for info in self.meta.list(prefix.rstrip("/")):
            rest = info.path.removeprefix(prefix)
            if rest.endswith(".json") and rest[:-5].isdigit():
                numbers.append(int(rest[:-5]))
        return sorted(numbers)

    def _deleted(self, project: str, name: str) -> builtins.list[int]:
        prefix = f"repos/{project}/{name}/_deleted/"
        return [int(i.path.removeprefix(prefix)) for i in self.meta.list(prefix.rstrip("/"))
                if i.path.removeprefix(prefix).isdigit()]

    def _read(self, project: str, name: str, number: int,
              tags: dict[str, int] | None = None) -> ModelVersion:
        """A manifest with the tags naming it (``tags``: the repository's, if read already)."""
        raw = self.meta.get(_manifest_key(project, name, number))
        if raw is None:
            raise NotFound(f"model {name}@{number} not found")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"the manifest of {name}@{number} cannot be read: {exc}"
                                ) from exc
        if tags is None:
            tags = self.tags(name, project=project)
        data.setdefault("project", project)
        return ModelVersion.from_dict(data, tuple(t for t, n in tags.items() if n == number))


def _manifest_key(project: str, name: str, number: int) -> str:
    return f"repos/{project}/{name}/_versions/{number}.json"


def _tag_key(project: str, name: str, tag: str) -> str:
    return f"repos/{project}/{name}/_tags/{tag}"
