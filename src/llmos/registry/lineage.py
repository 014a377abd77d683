"""Lineage: the versions a version was derived from, and those derived from it."""

from __future__ import annotations

from llmos.errors import NotFound
from llmos.registry.local import LocalRegistry
from llmos.registry.manifest import ModelVersion
from llmos.registry.refs import DEFAULT_PROJECT


def lineage(registry: LocalRegistry, ref: str, *, project: str = DEFAULT_PROJECT
            ) -> tuple[list[ModelVersion], list[ModelVersion]]:
    """(ancestors, nearest first; descendants, all generations) of a version."""
    version = registry.catalog.get(ref, project=project)
    ancestors: list[ModelVersion] = []
    seen = {version.ref}
    current = version
    while current.derived_from and current.derived_from not in seen:
        seen.add(current.derived_from)
        try:
            current = registry.catalog.get(current.derived_from, project=project)
        except NotFound:
            break  # the parent was deleted: the chain ends here
        ancestors.append(current)
    children: dict[str, list[ModelVersion]] = {}
    for other in registry.catalog.list(project=project):
        if other.derived_from:
            children.setdefault(other.derived_from, []).append(other)
    descendants: list[ModelVersion] = []
    todo, done = [version.ref], {version.ref}
    while todo:
        for child in children.get(todo.pop(0), []):
            if child.ref not in done:
                done.add(child.ref)
                descendants.append(child)
                todo.append(child.ref)
    return ancestors, descendants
