"""What a deployment can do, from its engine and its settings (read by the gateway,
which loads no engine, and by the engines themselves).

- ``llama.cpp``: chat, completions and tools; embeddings only, with ``embedding`` set
  (llama.cpp's embedding mode loads the model for that alone);
- ``sentence-transformers``: embeddings;
- ``remote`` (an OpenAI-compatible provider): as llama.cpp, by what its user says the
  upstream model is (``embedding`` for an embedding model);
- ``vllm`` (a transformers folder, on a GPU): as llama.cpp.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from llmos.errors import BadRequest

Capability = Literal["chat", "completions", "embeddings", "tools"]
GENERATES: frozenset[Capability] = frozenset({"chat", "completions", "tools"})
EMBEDS: frozenset[Capability] = frozenset({"embeddings"})
ORDER: tuple[Capability, ...] = ("chat", "completions", "tools", "embeddings")


def of(engine: str, *, embedding: bool) -> frozenset[Capability]:
    """A deployment's capabilities by its engine's name and settings."""
    if engine == "sentence-transformers":
        return EMBEDS
    return EMBEDS if embedding else GENERATES


def engine_for(model_format: str | None) -> str:
    """The engine that loads a version of this format (its ``config.format``)."""
    if model_format in ("sentence-transformers", "remote"):
        return model_format
    if model_format == "transformers":
        return "vllm"
    return "llama.cpp"


def listed(capabilities: Iterable[Capability]) -> list[Capability]:
    have = set(capabilities)
    return [c for c in ORDER if c in have]


def require(needed: Capability, capabilities: frozenset[Capability], model: str) -> None:
    """A 400 that says why, when ``model`` cannot serve ``needed``."""
    if needed not in capabilities:
        raise BadRequest(f"the model {model!r} does not serve {needed} (it serves "
                         f"{', '.join(listed(capabilities))})", param="model")
