"""llama.cpp through xllamacpp, called in-process.

xllamacpp also starts llama.cpp's own HTTP listener; it stays on 127.0.0.1 with
the web UI off and a random API key, and LLMOS never sends requests to it.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from llmos.engines.base import (
    CannotMerge,
    Embedded,
    Engine,
    EngineConfig,
    EngineEvent,
    EventCallback,
    GenerationResult,
    Kind,
    Progress,
    PromptProgress,
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
    p.n_batch = config.batch_size
    p.n_ubatch = config.batch_size
    p.cpuparams.n_threads = config.threads
    p.cpuparams_batch.n_threads = config.batch_threads or config.threads
    p.cpuparams.poll = config.poll
    p.cpuparams_batch.poll = config.poll
    p.cache_ram_mib = config.cache_ram_mib
    p.n_predict = -1
    p.use_jinja = True  # llama.cpp's own Jinja engine renders the template
    p.chat_template = config.chat_template
    p.verbosity = config.log_verbosity
    p.ui = False
    p.api_keys = [secrets.token_urlsafe(32)]
    p.endpoint_metrics = False
    if config.embedding:
        # With a KV cache split per slot, llama.cpp's embeddings of several inputs in
        # one batch bleed into each other (the same text alone and beside two others:
        # cosine 0.82, seen here); one unified cache gives each its own vector again.
        p.kv_unified = True
        p.embedding = True
        p.pooling_type = getattr(xllamacpp.llama_pooling_type,
                                 f"LLAMA_POOLING_TYPE_{config.pooling.upper()}")
        p.n_ubatch = p.n_batch = max(config.batch_size, config.ctx_per_slot or 0)
    return p


class LlamaCppEngine(Engine):
    def __init__(self, config: EngineConfig) -> None:
        import xllamacpp

        if not config.model_path.is_file():
            raise EngineError(f"model file {config.model_path} does not exist")
        self.config = config
        self.longest_token = _longest_token(config.model_path)
        # llama.cpp's server defers a task that finds no free slot and starts it as one
        # is released. (Embeddings: the worker gathers them into calls of its own.)
        self.takes_standby = not config.embedding
        try:
            self._server: Any = xllamacpp.Server(_params(config))
        except Exception as exc:  # the binding raises plain RuntimeErrors
            raise EngineError(f"llama.cpp could not load {config.model_path}: {exc}") from exc
        log.info("llama.cpp engine loaded %s (%d slots, ctx %d, %d threads)",
                 config.model_path.name, config.slots, config.ctx_size, config.threads)

    def generate(
        self, kind: Kind, body: dict[str, Any], on_event: EventCallback
    ) -> GenerationResult:
        request = _streamed(body)
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

    def embed(self, inputs: Sequence[str | list[int]]) -> Embedded:
        """One llama.cpp call for the batch: its server makes a task per input and
        decodes them together; vectors come back normalised (euclidean)."""
        if not self.config.embedding:
            raise BadRequest("this replica was loaded for generation, not embeddings")
        try:
            answer = self._server.handle_embeddings({"input": list(inputs),
                                                     "encoding_format": "float"})
        except Exception as exc:
            raise EngineError(f"the engine failed to embed: {exc}") from exc
        if isinstance(answer, dict) and "error" in answer:
            error = answer["error"]
            message = error.get("message", str(error)) if isinstance(error, dict) else error
            raise BadRequest(f"the engine refused the input: {message}", param="input")
        data = sorted(answer["data"], key=lambda item: item["index"])
        usage = answer.get("usage") or {}
        return Embedded([item["embedding"] for item in data],
                        int(usage.get("prompt_tokens", 0)))

    def merge_key(self, kind: Kind, body: dict[str, Any]) -> str | None:
        """Completions that differ only in a text prompt can be one llama.cpp call.

        A list of prompts is llama.cpp's own batch form: one task per prompt with the
        same parameters, all posted to its queue at once, so one batch prefills them
        all (requests that arrive one by one, even a millisecond apart, often do not
        make its first batch). Each task samples as it would alone (its own seed).
        """
        if kind != "completion" or not isinstance(body.get("prompt"), str):
            return None
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or not 0 < max_tokens <= self.config.merge_max_tokens:
            return None  # (a member that stops ends the call: the others go on alone)
        try:
            return json.dumps({k: v for k, v in body.items() if k != "prompt"},
                              sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            return None

    def generate_many(
        self, kind: Kind, bodies: Sequence[dict[str, Any]], on_events: Sequence[EventCallback],
        on_done: Callable[[int, GenerationResult | BaseException], None],
    ) -> None:
        if kind != "completion" or len(bodies) < 2:
            raise CannotMerge("only two or more completions are run together")
        request = _streamed(bodies[0])
        request["prompt"] = [body["prompt"] for body in bodies]
        batch = _Batch([_StreamState(kind, on_event) for on_event in on_events], on_done)
        try:
            answer = self._server.handle_completions(request, batch.on_chunk)
        except Exception as exc:
            batch.fail(exc)
            return
        if isinstance(answer, dict) and "error" in answer:
            batch.error = answer["error"]
        batch.finish()

    def continue_from(self, kind: Kind, body: dict[str, Any], progress: Progress,
                      on_event: EventCallback) -> GenerationResult:
        """Go on with a completion of a merged call that ended early: its prompt and the
        text it has sent are the new prompt, and it may generate what is left of its
        max_tokens. (Greedy decoding goes on as it would have; a sampled one draws its
        next tokens afresh.)"""
        left = int(body["max_tokens"]) - progress.generated
        if left <= 0:
            return GenerationResult("length", progress.prompt_tokens, progress.generated)
        continued = dict(body, prompt=str(body["prompt"]) + progress.text, max_tokens=left)

        def on_continued(event: EngineEvent) -> bool:
            if isinstance(event, PromptReady):  # (reported already, for the first prompt)
                return on_event(PromptProgress(event.prompt_tokens))
            return on_event(event)

        result = self.generate(kind, continued, on_continued)
        return GenerationResult(
            result.finish_reason, progress.prompt_tokens,
            progress.generated + result.completion_tokens, stopped=result.stopped)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        self._server = None
        del server


def _longest_token(path: Path) -> int | None:
    from llmos.registry.gguf import read_gguf

    try:
        return read_gguf(path).longest_token_bytes
    except LLMOSError as exc:  # llama.cpp may still load it; only the bound is lost
        log.warning("no token bound for %s: %s", path.name, exc.message)
        return None


COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", ",
                "lenient": True}
"""llguidance's JSON options: one space after ``:`` and ``,`` and none elsewhere, and
schema keywords it does not know ignored (as llama.cpp's own converter does)."""


def _schema_grammar(body: dict[str, Any]) -> dict[str, Any]:
    """A ``json_schema`` response format as an llguidance grammar, which llama.cpp takes
    as ``grammar``: its own schema converter lets a model write any run of newlines and
    tabs between tokens (a small one fills its budget with them); llguidance's JSON is
    compact. Not with tools the engine may call (llama.cpp then refuses a grammar)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return body
    if body.get("tools") and body.get("tool_choice") != "none":
        return body
    schema = (fmt.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return body
    options = COMPACT_JSON | (schema.get("x-guidance") or {})
    grammar = "%llguidance {}\nstart: %json " + json.dumps(schema | {"x-guidance": options})
    problem = _grammar_problem(grammar)
    if problem:
        raise BadRequest(f"the JSON schema (of response_format, or of a forced tool call's "
                         f"parameters) cannot be used: {problem}", param="response_format")
    return {k: v for k, v in body.items() if k != "response_format"} | {"grammar": grammar}


@functools.lru_cache(maxsize=256)
def _grammar_problem(grammar: str) -> str:
    """Why llguidance cannot compile the grammar ("" when it can). llama.cpp, given one
    it cannot compile, generates unconstrained and says nothing: check first."""
    from llguidance import LLMatcher

    error: str = LLMatcher.validate_grammar(grammar)
    return error.strip().splitlines()[0] if error.strip() else ""


def _streamed(body: dict[str, Any]) -> dict[str, Any]:
    request = dict(_schema_grammar(body))
    request["stream"] = True
    request["stream_options"] = {"include_usage": True}
    request["return_progress"] = True
    return request


class _Batch:
    """Routes the chunks of one multi-prompt call to each request's stream state.

    A request that asks to stop (or whose callback fails) ends at once for its
    caller and gets no more events. llama.cpp cannot stop one task of a call, so the
    whole call ends (llama.cpp cancels its tasks) and the others go on alone
    (``restart``): one that had no token yet starts again, one that had tokens
    continues from the text it has sent (``continue_from``).
    """

    def __init__(self, states: list[_StreamState],
                 on_done: Callable[[int, GenerationResult | BaseException], None]) -> None:
        self.states = states
        self.on_done = on_done
        self.done = [False] * len(states)
        self.error: Any = None
        self.started = False
        self.restart = False

    def on_chunk(self, chunk: Any) -> bool:
        if not isinstance(chunk, dict):
            return False
        if "error" in chunk:
            self.error = chunk["error"]
            return True
        choices: list[Any] = chunk.get("choices") or []
        index = choices[0].get("index") if choices else None
        if not isinstance(index, int) or not 0 <= index < len(self.states) or self.done[index]:
            return False
        self.started = True
        state = self.states[index]
        state.on_chunk(chunk)
        others = [i for i, done in enumerate(self.done) if not done and i != index]
        if state.stopped and others:
            self._end(index)
            self.restart = True  # the others go on alone: see the class
            return True
        if state.stopped or choices[0].get("finish_reason"):
            self._end(index)
        return all(self.done)

    def _end(self, index: int, failure: BaseException | None = None) -> None:
        self.done[index] = True
        state = self.states[index]
        outcome: GenerationResult | BaseException
        if failure is not None:
            outcome = failure
        elif state.callback_error is not None:
            outcome = state.callback_error
        else:
            outcome = state.result()
        try:
            self.on_done(index, outcome)
        except Exception:  # never let an exception unwind through C++
            log.exception("a request's end could not be reported")

    def fail(self, exc: BaseException) -> None:
        if not self.started:
            raise CannotMerge(str(exc)) from exc
        error = exc if isinstance(exc, LLMOSError) else EngineError(f"llama.cpp failed: {exc}")
        for index, done in enumerate(self.done):
            if not done:
                self._end(index, error)

    def finish(self) -> None:
        if self.restart:
            progress = {i: Progress(state.prompt_tokens, "".join(state.sent), state.generated)
                        for i, state in enumerate(self.states)
                        if not self.done[i] and state.generated}
            raise CannotMerge("a request of the call was cancelled; the others go on alone",
                              progress)
        if self.error is not None:
            if not self.started:
                # llama.cpp refused the prompts together (one too long, say): run each
                # on its own so that only the faulty one fails.
                raise CannotMerge(str(self.error.get("message", self.error))
                                  if isinstance(self.error, dict) else str(self.error))
            try:
                _raise_engine_error(self.error, "completion")
            except LLMOSError as exc:
                self.fail(exc)
            return
        for index, done in enumerate(self.done):
            if not done:
                self._end(index)


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
        self.sent: list[str] = []
        """The text handed on so far (what the client has)."""
        self.generated = 0
        """Tokens generated so far (llama.cpp streams one chunk per token)."""

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
            # Every later batch of a long prefill: where a cancelled request stops.
            return self._emit(PromptProgress(int(progress.get("processed", 0))))
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
            else:
                self.generated += 1
            logprobs = (choice.get("logprobs") or {}).get("content") or ()
            calls = (choice.get("delta") or {}).get("tool_calls") or () if self.kind == "chat" \
                else ()
            if text or logprobs or calls:
                if self._emit(TextDelta(text or "", tuple(logprobs), tuple(calls))):
                    return True
                if text:
                    self.sent.append(text)
        return False

    def _emit(self, event: EngineEvent) -> bool:
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
        raise BadRequest(f"the JSON schema (of response_format, or of a forced tool call's "
                         f"parameters) cannot be used: {message}", param="response_format")
    if int(error.get("code", 500)) == 400 or kind == "invalid_request_error":
        raise BadRequest(f"the engine rejected the request: {message}")
    raise EngineError(f"llama.cpp failed: {message}")
