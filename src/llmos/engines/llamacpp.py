"""llama.cpp through xllamacpp, called in-process.

xllamacpp also starts llama.cpp's own HTTP listener; it stays on 127.0.0.1 with
the web UI off and a random API key, and LLMOS never sends requests to it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, NoReturn

from llmos.engines.base import (
    Engine,
    EngineConfig,
    EventCallback,
    GenerationResult,
    Kind,
    PromptReady,
    TextDelta,
)
from llmos.errors import BadRequest, ContextLengthExceeded, EngineError, LLMOSError

log = logging.getLogger(__name__)


def _params(config: EngineConfig) -> Any:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(config.model_path)
    p.n_parallel = config.slots
    p.n_ctx = config.ctx_size
    p.kv_unified = config.kv_unified
    p.cpuparams.n_threads = config.threads
    p.cpuparams_batch.n_threads = config.batch_threads or config.threads
    p.cpuparams.poll = config.poll
    p.cpuparams_batch.poll = config.poll
    p.cache_ram_mib = config.cache_ram_mib
    p.n_predict = -1
    p.verbosity = config.log_verbosity
    p.ui = False
    p.api_keys = [secrets.token_urlsafe(32)]
    p.endpoint_metrics = False
    return p


class LlamaCppEngine(Engine):
    def __init__(self, config: EngineConfig) -> None:
        import xllamacpp

        if not config.model_path.is_file():
            raise EngineError(f"model file {config.model_path} does not exist")
        self.config = config
        try:
            self._server: Any = xllamacpp.Server(_params(config))
        except Exception as exc:  # the binding raises plain RuntimeErrors
            raise EngineError(f"llama.cpp could not load {config.model_path}: {exc}") from exc
        log.info("llama.cpp engine loaded %s (%d slots, ctx %d, %d threads)",
                 config.model_path.name, config.slots, config.ctx_size, config.threads)

    def generate(
        self, kind: Kind, body: dict[str, Any], on_event: EventCallback
    ) -> GenerationResult:
        request = dict(body)
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        request["return_progress"] = True
        state = _StreamState(kind, on_event)
        handler = (self._server.handle_chat_completions if kind == "chat"
                   else self._server.handle_completions)
        try:
            answer = handler(request, state.on_chunk)
        except LLMOSError:
            raise
        except Exception as exc:
            _raise_engine_error({"message": str(exc)}, kind)
        if state.callback_error is not None:
            raise state.callback_error
        if isinstance(answer, dict) and "error" in answer:
            _raise_engine_error(answer["error"], kind)
        if state.error is not None:
            _raise_engine_error(state.error, kind)
        return state.result()

    def close(self) -> None:
        server = getattr(self, "_server", None)
        self._server = None
        del server


class _StreamState:
    """Turns llama.cpp's OpenAI-style stream chunks into engine events."""

    def __init__(self, kind: Kind, on_event: EventCallback) -> None:
        self.kind = kind
        self.on_event = on_event
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.prompt_reported = False
        self.stopped = False
        self.error: dict[str, Any] | None = None
        self.callback_error: BaseException | None = None

    def on_chunk(self, chunk: dict[str, Any]) -> bool:
        try:
            return self._on_chunk(chunk)
        except BaseException as exc:  # never let an exception unwind through C++
            self.callback_error = exc
            self.stopped = True
            return True

    def _on_chunk(self, chunk: dict[str, Any]) -> bool:
        if self.stopped:
            return True
        if "error" in chunk:
            self.error = chunk["error"]
            return True
        progress = chunk.get("prompt_progress")
        if progress is not None:
            if not self.prompt_reported:
                self.prompt_reported = True
                self.prompt_tokens = int(progress.get("total", 0))
                return self._emit(PromptReady(self.prompt_tokens))
            return False
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens", self.prompt_tokens))
            self.completion_tokens = int(usage.get("completion_tokens", 0))
        for choice in chunk.get("choices") or ():
            if self.kind == "chat":
                text = (choice.get("delta") or {}).get("content")
            else:
                text = choice.get("text")
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if text and self._emit(TextDelta(text)):
                return True
        return False

    def _emit(self, event: PromptReady | TextDelta) -> bool:
        if self.on_event(event):
            self.stopped = True
        return self.stopped

    def result(self) -> GenerationResult:
        return GenerationResult(
            finish_reason=self.finish_reason or ("cancelled" if self.stopped else "stop"),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            stopped=self.stopped,
        )


def _raise_engine_error(error: Any, request_kind: Kind) -> NoReturn:
    if not isinstance(error, dict):
        raise EngineError(f"llama.cpp failed: {error}")
    message = str(error.get("message", "unknown engine error"))
    kind = error.get("type", "")
    if kind == "exceed_context_size_error":
        raise ContextLengthExceeded(
            f"the prompt has {error.get('n_prompt_tokens')} tokens but a request slot holds "
            f"{error.get('n_ctx')} tokens (context size / slots)",
            param="messages" if request_kind == "chat" else "prompt",
        )
    if "json schema" in message.lower() or "grammar" in message.lower():
        raise BadRequest(f"response_format cannot be used: {message}", param="response_format")
    if int(error.get("code", 500)) == 400 or kind == "invalid_request_error":
        raise BadRequest(f"the engine rejected the request: {message}")
    raise EngineError(f"llama.cpp failed: {message}")
