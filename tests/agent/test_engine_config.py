"""How a replica's engine is configured: every engine setting reaches it, defined once."""

from __future__ import annotations

from pathlib import Path

from llmos.agent.runner import engine_config
from llmos.registry.local import LocalRegistry
from llmos.settings import EngineOptions, EngineSettings
from tests.registry.test_gguf import make_gguf


def test_every_engine_setting_reaches_the_engine_as_set(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(make_gguf())
    registry = LocalRegistry(tmp_path / "store")
    version = registry.import_path(weights, "acme/tiny").version
    # Every option away from its default, so a field dropped on the way shows.
    given = {"slots": 3, "threads": 1, "batch_threads": 2, "ctx_size": 3000,
             "kv_unified": True, "batch_size": 64, "cache_ram_mib": 7, "poll": 3,
             "log_verbosity": 2, "merge_max_tokens": 9, "embedding": True,
             "pooling": "cls", "batch_wait_ms": 5.0}
    assert set(given) == set(EngineOptions.model_fields)  # (a new option: add it here)
    settings = EngineSettings(**given, chat_template="chatml", default_max_tokens=9)

    config = engine_config(settings, registry, version)

    assert {name: getattr(config, name) for name in EngineOptions.model_fields} == given
    assert config.model_path == registry.files.weights_path(version)
    assert "<|im_start|>" in config.chat_template  # the built-in it names, as text
    assert config.ctx_per_slot == 3000  # one cache for all slots: a request may use it all
