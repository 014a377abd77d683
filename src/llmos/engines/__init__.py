"""Inference engines behind one protocol, chosen by name."""

from __future__ import annotations

import importlib

from llmos.engines.base import Engine, EngineConfig
from llmos.errors import ConfigError

ENGINES: dict[str, str] = {
    "llama.cpp": "llmos.engines.llamacpp:LlamaCppEngine",
    "sentence-transformers": "llmos.engines.sbert:SentenceTransformersEngine",
    "remote": "llmos.engines.remote:RemoteEngine",
    "vllm": "llmos.engines.vllm:VllmEngine",
}


def load_engine(name: str, config: EngineConfig) -> Engine:
    """Load a model with the named engine (blocking: call it off the event loop)."""
    target = ENGINES.get(name)
    if target is None:
        raise ConfigError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    module_name, _, class_name = target.partition(":")
    cls: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return cls(config)  # type: ignore[call-arg]


__all__ = ["ENGINES", "Engine", "EngineConfig", "load_engine"]
