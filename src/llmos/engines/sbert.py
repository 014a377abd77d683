"""The sentence-transformers engine: embedding models from a registry version that holds
a sentence-transformers folder (``modules.json``, its config, weights, tokenizer), on
the CPU, loaded offline (nothing is fetched from a hub).

An optional extra: ``pip install 'llmos[embeddings]'`` (sentence-transformers, and
PyTorch pinned to its CPU build). It has no batching of its own, so the worker gathers
concurrent requests into one ``embed`` call (``gathers_embeddings``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from llmos.capabilities import EMBEDS, Capability
from llmos.engines.base import Embedded, Engine, EngineConfig, EventCallback, GenerationResult
from llmos.errors import BadRequest, ConfigError, EngineError

log = logging.getLogger(__name__)


class SentenceTransformersEngine(Engine):
    gathers_embeddings = True

    def __init__(self, config: EngineConfig) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError("the sentence-transformers engine needs the embeddings extra: "
                              "pip install 'llmos[embeddings]'") from exc
        folder = config.model_path if config.model_path.is_dir() else config.model_path.parent
        if not (folder / "modules.json").is_file():
            raise EngineError(f"{folder} is not a sentence-transformers folder (no "
                              "modules.json)")
        torch.set_num_threads(config.threads)
        self.config = config
        try:
            model: Any = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:
            raise EngineError(f"sentence-transformers could not load {folder}: {exc}") from exc
        self._model = model
        self._lock = threading.Lock()
        """One call at a time: the tokenizer is not thread-safe, and a call already
        uses every thread torch was given."""
        self.max_tokens: int = model.max_seq_length or 512
        log.info("sentence-transformers engine loaded %s (%d dimensions, %d threads)",
                 folder.name, self._model.get_sentence_embedding_dimension(),
                 config.threads)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return EMBEDS

    def embed(self, inputs: Sequence[str | list[int]]) -> Embedded:
        texts: list[str] = []
        for item in inputs:
            if not isinstance(item, str):
                raise BadRequest("this model takes texts, not token ids", param="input")
            texts.append(item)
        with self._lock:
            try:
                # Each input's tokens as the model sees them (cut at its longest sequence).
                mask = self._model.tokenize(texts)["attention_mask"]
                counts = tuple(int(n) for n in mask.sum(dim=1).tolist())
                vectors = self._model.encode(texts, batch_size=max(1, len(texts)),
                                             normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)
            except Exception as exc:
                raise EngineError(f"the engine failed to embed: {exc}") from exc
        return Embedded(vectors.tolist(), sum(counts), counts)

    def generate(self, kind: Any, body: dict[str, Any], on_event: EventCallback
                 ) -> GenerationResult:
        raise BadRequest("this model serves embeddings only", param="model")

    def close(self) -> None:
        self._model = None
