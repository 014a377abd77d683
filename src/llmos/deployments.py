"""A deployment serves one registry version, pinned so that it cannot be deleted.

Its ``model_ref`` (``name``, ``name:tag``, ``name@N``) is resolved once, when the
deployment is made or deployed again; the version it resolved to is kept in the
store (``model_version``) and pinned in the registry. Replicas load the pinned
version, so moving or removing a tag changes nothing that runs, and neither a
deletion (by any name) nor gc can take the files from under them.

Changes that need new replicas (another version, engine settings, resources, node
selector) bump the deployment's ``generation``; the controller then replaces its
replicas one at a time. Scaling and the placement preferences do not.

An autoscaled deployment (``autoscale``: its bounds and objective) has one writer of
its replica count, the controller's autoscaler: a manual scale is refused unless the
same change sets new bounds or switches autoscaling off (``autoscale={}``).
"""

from __future__ import annotations

import logging
from typing import Any

from llmos import capabilities
from llmos.errors import Conflict, LLMOSError, NotFound
from llmos.registry.local import LocalRegistry
from llmos.store import Deployment, Store

log = logging.getLogger(__name__)


def holder(deployment: Deployment) -> str:
    return holder_of(deployment.name, deployment.project)


def holder_of(name: str, project: str) -> str:
    """How a deployment is named as the holder of a registry pin."""
    return f"deployment {name!r} (project {project})"


def pin(store: Store, registry: LocalRegistry, deployment: Deployment, *,
        resolve: bool = False) -> Deployment:
    """Pin the deployment's version; ``resolve`` looks its reference up again (a new
    deploy), moving the pin if it now names another version."""
    pinned = deployment.model_version
    if pinned and not resolve:
        return deployment
    project = deployment.project
    try:
        version = registry.catalog.get(deployment.model_ref, project=project)
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
            registry.pins.unpin(registry.catalog.get(pinned, project=project), holder(deployment))
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


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


REPLACING = ("engine_settings", "resources", "node_selector")
"""Fields whose change needs new replicas (besides the model version)."""
FIELDS = ("replicas", "engine_settings", "resources", "node_selector", "strategy",
          "anti_affinity", "priority", "aliases", "autoscale")


def bounded(replicas: int, autoscale: dict[str, Any] | None) -> int:
    """The replica count within an autoscaled deployment's bounds."""
    if not autoscale:
        return replicas
    return max(int(autoscale.get("min", 1)), min(int(autoscale.get("max", replicas)),
                                                  replicas))


def _one_writer(deployment: Deployment, changes: dict[str, Any]) -> None:
    """A manual scale of an autoscaled deployment must say what becomes of autoscaling."""
    if (changes.get("replicas") is not None and deployment.autoscale
            and changes.get("autoscale") is None):
        bounds = deployment.autoscale
        raise Conflict(
            f"deployment {deployment.name!r} is autoscaled ({bounds.get('min')} to "
            f"{bounds.get('max')} replicas): its autoscaler sets the replica count. "
            "Change its bounds or switch autoscaling off in the same request "
            f"(llmos deployments autoscale {deployment.name} --min N --max M, or --off)")


def _check_ids(store: Store, name: str, aliases: list[str] | None, project: str) -> None:
    """A model id names one deployment: no alias may be another's name or alias."""
    taken: dict[str, str] = {}
    for d in store.list_deployments(project):
        if d.name != name:
            for model_id in (d.name, *(d.aliases or [])):
                taken[model_id] = d.name
    for model_id in (name, *(aliases or [])):
        if model_id in taken:
            raise Conflict(f"the model id {model_id!r} is already deployment "
                           f"{taken[model_id]!r}'s (a name or an alias)")


def get(store: Store, name: str, project: str = "default") -> Deployment:
    deployment = store.get_deployment(name, project)
    if deployment is None:
        known = ", ".join(d.name for d in store.list_deployments(project)) or "none"
        raise DeploymentNotFound(f"no deployment {name!r} in project {project!r}; "
                                 f"deployments: {known}")
    return deployment


def create(store: Store, registry: LocalRegistry, name: str, model_ref: str, *,
           project: str = "default", **fields: Any) -> Deployment:
    """A new deployment of ``model_ref``, its version resolved and pinned."""
    if store.get_deployment(name, project) is not None:
        raise Conflict(f"deployment {name!r} already exists in project {project!r}; change "
                       "it with PATCH /api/deployments/{name} (llmos deployments update)")
    _check_ids(store, name, fields.get("aliases"), project)
    autoscale = fields.pop("autoscale", None) or None
    asked = fields.pop("replicas", None)
    replicas = bounded(asked if asked is not None else 1, autoscale)
    version = registry.catalog.get(model_ref, project=project)  # fails before anything is written
    fields.setdefault("engine", capabilities.engine_for((version.config or {}).get("format")))
    who = holder_of(name, project)
    registry.pins.pin(version, who)  # pinned before it is recorded
    try:
        row = store.upsert_deployment(
            name, model_ref, project=project, engine_settings=fields.pop("engine_settings",
                                                                        None),
            replicas=replicas, model_version=version.ref, autoscale=autoscale, **fields)
    except Exception:
        registry.pins.unpin(version, who)
        raise
    log.info("deployment %r (project %s) created: %s", name, project, version.ref,
             extra={"event": "deployment.created"})
    return row


def update(store: Store, registry: LocalRegistry, name: str, *, project: str = "default",
           model_ref: str | None = None, **changes: Any) -> Deployment:
    """Change a deployment; a change its replicas must be replaced for bumps its
    generation (the controller then rolls them one at a time)."""
    deployment = get(store, name, project)
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a deployment field: {', '.join(sorted(unknown))}")
    _one_writer(deployment, changes)
    autoscale = changes.pop("autoscale", None)
    if autoscale is not None:  # given: new bounds, or {} (switched off)
        changes["autoscale"] = autoscale or None
        replicas = changes.get("replicas")
        changes["replicas"] = bounded(deployment.replicas if replicas is None else replicas,
                                      changes["autoscale"])
    changed = {k: v for k, v in changes.items() if (v is not None or k == "autoscale")
               and getattr(deployment, k) != v}
    if "autoscale" in changed and changed["autoscale"] is None:
        changed["autoscale_status"] = None
    if "aliases" in changed:
        _check_ids(store, name, changed["aliases"], project)
    replace = any(k in REPLACING for k in changed)
    old_version = deployment.model_version
    if model_ref is not None and model_ref != deployment.model_ref:
        version = registry.catalog.get(model_ref, project=project)
        changed["model_ref"] = model_ref
        if version.ref != old_version:
            # pinned before it is recorded; recorded with its generation in one write, so
            # that the controller never sees the new generation with the old version
            registry.pins.pin(version, holder(deployment))
            changed["model_version"] = version.ref
            replace = True
    if not changed:
        return deployment
    if replace:
        changed["generation"] = deployment.generation + 1
    row = store.update_deployment(name, project, **changed)
    assert row is not None
    if "model_version" in changed and old_version:
        try:
            registry.pins.unpin(registry.catalog.get(old_version, project=project),
                                holder(deployment))
        except NotFound:
            pass
    log.info("deployment %r (project %s) changed: %s", name, project,
             ", ".join(sorted(changed)), extra={"event": "deployment.updated"})
    return row


def delete(store: Store, registry: LocalRegistry, name: str, *,
           project: str = "default") -> None:
    """Remove it (the controller stops its replicas) and unpin its version."""
    deployment = get(store, name, project)
    store.delete_deployment(name, project)
    if deployment.model_version:
        try:
            registry.pins.unpin(registry.catalog.get(deployment.model_version, project=project),
                                holder(deployment))
        except NotFound:
            pass
    log.info("deployment %r (project %s) deleted", name, project,
             extra={"event": "deployment.deleted"})
