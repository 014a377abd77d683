"""A deployment serves one registry version, pinned so that it cannot be deleted.

Its ``model_ref`` (``name``, ``name:tag``, ``name@N``) is resolved once, when the
deployment is made or deployed again; the version it resolved to is kept in the
store (``model_version``) and pinned in the registry. Replicas load the pinned
version, so moving or removing a tag changes nothing that runs, and neither a
deletion (by any name) nor gc can take the files from under them.
"""

from __future__ import annotations

import logging

from llmos.errors import LLMOSError, NotFound
from llmos.registry import LocalRegistry
from llmos.store import Deployment, Store

log = logging.getLogger(__name__)


def holder(deployment: Deployment) -> str:
    return f"deployment {deployment.name!r} (project {deployment.project})"


def pin(store: Store, registry: LocalRegistry, deployment: Deployment, *,
        resolve: bool = False) -> Deployment:
    """Pin the deployment's version; ``resolve`` looks its reference up again (a new
    deploy), moving the pin if it now names another version."""
    pinned = deployment.model_version
    if pinned and not resolve:
        return deployment
    project = deployment.project
    try:
        version = registry.get(deployment.model_ref, project=project)
    except LLMOSError as exc:
        if pinned:  # the reference no longer resolves: keep serving what is pinned
            log.warning("%s: %s; it keeps %s", holder(deployment), exc.message, pinned)
            return deployment
        raise
    registry.pins.pin(version, holder(deployment))  # (again, if it was lost)
    if version.ref == pinned:
        return deployment
    store.set_model_version(deployment.name, version.ref, project=project)
    deployment.model_version = version.ref
    if pinned:
        try:
            registry.pins.unpin(registry.get(pinned, project=project), holder(deployment))
        except NotFound:
            pass
    log.info("%s now serves %s", holder(deployment), version.ref)
    return deployment


def deploy(store: Store, registry: LocalRegistry, name: str, model_ref: str, *,
           project: str = "default") -> Deployment:
    """Create (or point again) the deployment ``name`` at ``model_ref``, pinned."""
    existing = store.get_deployment(name, project)
    if existing is None:
        existing = store.upsert_deployment(name, model_ref, project=project)
    elif existing.model_ref != model_ref:  # its version stays pinned until the new one is
        existing = store.upsert_deployment(
            name, model_ref, project=project, engine=existing.engine,
            engine_settings=existing.engine_settings, replicas=existing.replicas)
    return pin(store, registry, existing, resolve=True)
