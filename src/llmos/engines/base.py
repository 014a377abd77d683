"""The engine protocol: one loaded model that generates for many requests at once.

``generate`` blocks its calling thread; the worker calls it from a pool with one
thread per slot, so concurrent requests really run in parallel slots.

An engine may also take several requests in one call (``generate_many``): those
whose ``merge_key`` is equal differ only in their prompt, and starting them
together lets the engine put all their prompts into its first batch.

An engine that serves embeddings implements ``embed`` (one call for a batch of
inputs: the worker gathers concurrent requests into it) and says so in
``capabilities``. See docs/engines.md.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict

from llmos.capabilities import EMBEDS, GENERATES, Capability
from llmos.settings import EngineOptions

Kind = Literal["chat", "completion"]


class EngineConfig(EngineOptions):
    """What an engine is loaded with: the engine settings (``EngineOptions``, defined
    once in ``settings.py``), the model's path, and its chat template."""

    model_config = ConfigDict(frozen=True)

    model_path: Path
    chat_template: str = ""
    """The Jinja chat template; empty: the model file's own."""


@dataclass(frozen=True)
class PromptReady:
    """The prompt is tokenized; sent before any token is generated."""

    prompt_tokens: int


@dataclass(frozen=True)
class PromptProgress:
    """Another batch of the prompt was processed (prefill goes on): a chance to stop."""

    processed: int


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[dict[str, Any], ...] = ()
    """Per generated token, when asked: ``token``, ``logprob``, ``bytes``,
    ``top_logprobs`` (OpenAI's chat shape, as llama.cpp gives it)."""
    tool_calls: tuple[dict[str, Any], ...] = ()
    """Pieces of tool calls the engine parsed from the text, in OpenAI's streamed
    shape: ``index``, then ``id`` and ``function.name`` on a call's first piece, and
    ``function.arguments`` text to append."""


EngineEvent = PromptReady | PromptProgress | TextDelta
EventCallback = Callable[[EngineEvent], bool]
"""Gets each event; returning True stops the generation and frees its slot."""


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stopped: bool = False
    """True when the callback asked to stop."""


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    """One per input, in order, each of unit length."""
    prompt_tokens: int
    per_input: tuple[int, ...] | None = None
    """Each input's tokens, where the engine counts them one by one."""


class Engine(abc.ABC):
    config: EngineConfig
    longest_token: int | None = None
    """The vocabulary's longest token in bytes, if known: bounds a prompt's token count
    from below before it is tokenized."""

    gathers_embeddings: bool = False
    """True: the worker gathers concurrent embedding requests into one ``embed`` call
    (the engine has no batching of its own; it must fill ``Embedded.per_input``).
    False: each request is its own call, and the engine batches them itself (llama.cpp
    decodes the tasks of concurrent calls together)."""

    takes_standby: bool = False
    """True: a call made while every slot is busy waits inside the engine and starts as
    soon as a slot frees (in the same step), so the worker hands it one request more than
    its slots (``worker/slots.py``). False: the engine would run it at once, over its slots."""

    @property
    def capabilities(self) -> frozenset[Capability]:
        return EMBEDS if self.config.embedding else GENERATES

    def embed(self, inputs: Sequence[str | list[int]]) -> Embedded:
        """Embed a batch of texts (or token ids) in one call (blocking)."""
        from llmos.errors import BadRequest

        raise BadRequest(f"{type(self).__name__} does not serve embeddings")

    @abc.abstractmethod
    def generate(
        self, kind: Kind, body: dict[str, Any], on_event: EventCallback
    ) -> GenerationResult:
        """Run one request to completion (blocking); raises an LLMOSError on failure."""

    def merge_key(self, kind: Kind, body: dict[str, Any]) -> str | None:
        """Equal keys: the requests may share one ``generate_many`` call. None: never."""
        return None

    def generate_many(
        self, kind: Kind, bodies: Sequence[dict[str, Any]], on_events: Sequence[EventCallback],
        on_done: Callable[[int, GenerationResult | BaseException], None],
    ) -> None:
        """Run requests of one merge key together (blocking).

        ``on_done(i, outcome)`` is called once per request, as soon as request ``i``
        ends, with its result or the error it failed with. Raises CannotMerge when
        the requests cannot (or can no longer) run together: each request whose
        ``on_done`` was not called is then run on its own, from where it got. That
        happens before any text, when the engine refuses them together (so only a
        faulty one fails), or when one of them stops (its slot is not held for a
        client that has gone).
        """
        raise CannotMerge(f"{type(self).__name__} runs one request per call")

    def continue_from(self, kind: Kind, body: dict[str, Any], progress: Progress,
                      on_event: EventCallback) -> GenerationResult:
        """Go on with a request of a merged call that ended early (see CannotMerge)."""
        raise NotImplementedError(f"{type(self).__name__} runs one request per call")

    @abc.abstractmethod
    def close(self) -> None: ...


@dataclass(frozen=True)
class Progress:
    """How far a request of a merged call got before the call ended early."""

    prompt_tokens: int
    text: str
    """The text it has sent."""
    generated: int
    """Tokens it has generated."""


class CannotMerge(Exception):
    """The requests must be run one by one: those whose ``on_done`` was not called yet,
    each from its ``progress`` if it has one (``Engine.continue_from``), else anew."""

    def __init__(self, message: str, progress: dict[int, Progress] | None = None) -> None:
        super().__init__(message)
        self.progress = progress or {}
