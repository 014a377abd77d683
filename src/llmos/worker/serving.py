"""How a worker's engine serves one request it holds a slot for: a generation, its
tokens sent as reply chunks (those that come together travel together), or an
embedding, gathered with others into one engine call.

Each returns the request's outcome (``ok``, ``cancelled``, ``rejected``, ``error``).
Every outcome but ``cancelled`` has sent the request's final chunk, a failure's too;
a cancelled one sends none (its client is gone, or the worker stops and gives it back).
A request refused before it reaches the engine raises, for the worker to answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmos.bus.messages import ErrorInfo, InferenceRequest, TokenLogprob, ToolCallDelta, Usage
from llmos.capabilities import require
from llmos.engines.base import Engine, EngineEvent, GenerationResult, PromptReady, TextDelta
from llmos.errors import ContextLengthExceeded, LLMOSError
from llmos.observability import metrics
from llmos.worker.cohort import CohortLauncher
from llmos.worker.embeddings import Gatherer, encoded, inputs_of
from llmos.worker.mailbox import Mailbox
from llmos.worker.replies import Replies

log = logging.getLogger(__name__)


class Serving:
    def __init__(self, engine: Engine, deployment: str, pool: ThreadPoolExecutor) -> None:
        self.engine = engine
        self.deployment = deployment
        self._launcher = CohortLauncher(pool, engine,
                                        metrics.BURST_HOLDS.labels(deployment).observe)
        self._gatherer = Gatherer(pool, engine, max_inputs=engine.config.slots,
                                  wait_s=engine.config.batch_wait_ms / 1000,
                                  on_call=self._embedding_call)
        self._tokens = metrics.GENERATED_TOKENS.labels(deployment)
        self._mailbox: Mailbox | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before the first request: engine threads post their tokens to ``loop``."""
        self._mailbox = Mailbox(loop)

    def _embedding_call(self, inputs: int) -> None:
        metrics.EMBEDDING_BATCHES.labels(self.deployment).inc()
        metrics.EMBEDDING_BATCH_INPUTS.labels(self.deployment).observe(inputs)

    async def embed(self, request: InferenceRequest, publish: Replies) -> str:
        """An embedding request: its vectors in one final chunk (base64 float32)."""
        require("embeddings", self.engine.capabilities, self.deployment)
        dimensions = request.body.get("dimensions")
        embedded = await self._gatherer.embed(inputs_of(request.body))
        await publish.chunk(
            final=True, finish_reason="stop",
            embeddings=[encoded(v, dimensions) for v in embedded.vectors],
            usage=Usage(prompt_tokens=embedded.prompt_tokens,
                        total_tokens=embedded.prompt_tokens))
        return "ok"

    async def generate(self, request: InferenceRequest, publish: Replies,
                       cancel: threading.Event, *, queued: bool = False) -> str:
        require("chat" if request.kind == "chat" else "completions",
                self.engine.capabilities, self.deployment)
        mailbox = self._mailbox
        assert mailbox is not None, "Serving.start was not called"
        deltas: list[TextDelta] = []
        """Streamed: the tokens not sent yet. Not streamed: all of them."""
        body = request.body
        ctx_per_slot = self.engine.config.ctx_per_slot

        def send_ready() -> None:  # on the loop, after the mailbox's drain
            if deltas:
                publish.add(**joined(deltas))
                deltas.clear()

        def take(event: TextDelta) -> None:  # on the loop: tokens that came together join
            if not deltas:
                mailbox.after_items(send_ready)
            deltas.append(event)

        def on_event(event: EngineEvent) -> bool:  # on an engine thread
            if cancel.is_set() or time.time() > request.deadline:
                return True
            if isinstance(event, PromptReady):
                if request.max_tokens_explicit:
                    _check_context(event.prompt_tokens, body, ctx_per_slot)
            elif isinstance(event, TextDelta):
                if request.stream:
                    mailbox.post(take, event)
                else:
                    deltas.append(event)
            return False

        kind = request.kind
        assert kind != "embedding"  # (embed's)
        future = self._launcher.submit(kind, body, on_event, hold=not queued)
        try:
            # (The engine's last tokens reach the loop before its end: the mailbox's drain
            # is queued first. Any not sent by then ride on the final chunk.)
            result: GenerationResult = await future
        except Exception as exc:
            if request.stream and deltas:  # the tokens that came before the failure
                publish.add(**joined(deltas))
            deltas.clear()
            if isinstance(exc, LLMOSError):
                error = error_info(exc)
            else:
                log.exception("engine failed")
                error = ErrorInfo(status=500, type="server_error", code="engine_error",
                                  message=f"the engine failed: {exc}")
            await publish.chunk(final=True, error=error)
            return failure_outcome(exc)
        if result.stopped and cancel.is_set():
            return "cancelled"  # (the worker's stop sets it too: then it is requeued)
        self._tokens.inc(result.completion_tokens)
        last = joined(deltas)
        deltas.clear()
        await publish.chunk(
            **last, final=True, finish_reason=result.finish_reason,
            usage=Usage(prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        total_tokens=result.prompt_tokens + result.completion_tokens))
        return "ok"


def joined(deltas: list[TextDelta]) -> dict[str, Any]:
    """One reply chunk's text, its tokens' logprobs when the request asked for them, and
    the pieces of tool calls (the pieces of one call that come in a row as one)."""
    if len(deltas) == 1 and not deltas[0].logprobs and not deltas[0].tool_calls:
        return {"text": deltas[0].text}  # (the common case: one token of text)
    fields: dict[str, Any] = {"text": "".join(d.text for d in deltas)}
    logprobs = [entry for d in deltas for entry in d.logprobs]
    if logprobs:
        fields["logprobs"] = [TokenLogprob.model_validate(e) for e in logprobs]
    calls: list[ToolCallDelta] = []
    for piece in (call for d in deltas for call in d.tool_calls):
        function = piece.get("function") or {}
        index = int(piece.get("index", 0))
        arguments = str(function.get("arguments") or "")
        if calls and calls[-1].index == index and not piece.get("id"):
            last = calls[-1]
            calls[-1] = last.model_copy(update={"arguments": last.arguments + arguments})
        else:
            calls.append(ToolCallDelta(index=index, id=piece.get("id"),
                                       name=function.get("name"), arguments=arguments))
    if calls:
        fields["tool_calls"] = calls
    return fields


def _check_context(prompt_tokens: int, body: dict[str, Any], ctx_per_slot: int | None) -> None:
    if ctx_per_slot is None:
        return
    max_tokens = int(body.get("max_tokens") or 0)
    if prompt_tokens + max_tokens > ctx_per_slot:
        raise ContextLengthExceeded(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}, "
            f"together {prompt_tokens + max_tokens}, but a request slot holds {ctx_per_slot} "
            "tokens (context size / slots); shorten the prompt or lower max_tokens",
            param="max_tokens",
        )


def failure_outcome(exc: BaseException) -> str:
    """``rejected`` for the client's mistakes (a 4xx: context overflow, a bad grammar), so
    that they are not counted as the worker's errors; ``error`` for everything else."""
    return "rejected" if isinstance(exc, LLMOSError) and exc.status < 500 else "error"


def error_info(exc: LLMOSError) -> ErrorInfo:
    return ErrorInfo(status=exc.status, type=exc.type, message=exc.message, param=exc.param,
                     code=exc.code)
