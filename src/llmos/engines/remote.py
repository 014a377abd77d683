"""A remote OpenAI-compatible provider as an engine: the worker calls the endpoint its
version's ``remote.json`` names (``llmos.providers``), so keys, quotas, metrics, logs
and the bus's at-least-once path apply to a hosted model as to a local one.

- Streams pass through chunk by chunk (each upstream chunk becomes a ``TextDelta``).
- 429, 5xx and failed connections before the first token are tried again, with
  exponential backoff and full jitter, waiting at least what ``Retry-After`` asks.
- A request is stopped when its client leaves or its deadline passes: a watcher asks
  every in-flight request's callback (``PromptProgress``) and closes the connection of
  one that must stop, also while the upstream is silent.
- The API key is read on the worker's machine (an environment variable or a file),
  sent only in the ``Authorization`` header, and never logged.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from llmos import providers
from llmos.engines.base import (
    Embedded,
    Engine,
    EngineConfig,
    EventCallback,
    GenerationResult,
    Kind,
    PromptProgress,
    TextDelta,
)
from llmos.errors import BadRequest, EngineError, LLMOSError, ProviderError, excerpt

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0
WATCH_S = 0.1
"""How often in-flight requests are asked whether they must stop."""
RETRIED = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


@dataclass
class _Call:
    on_event: EventCallback
    response: httpx.Response | None = None
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop_if_asked(self) -> bool:
        if not self.stopped and self.on_event(PromptProgress(0)):
            with self.lock:
                self.stopped = True
                if self.response is not None:
                    _hang_up(self.response)
        return self.stopped


class _Retry(Exception):
    def __init__(self, reason: str, after_s: float | None = None,
                 final: LLMOSError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s
        self.final = final


class RemoteEngine(Engine):
    def __init__(self, config: EngineConfig) -> None:
        try:
            spec = providers.parse(config.model_path.read_bytes())
        except OSError as exc:
            raise EngineError(f"cannot read {config.model_path}: {exc.strerror}") from None
        self._connect(config, spec, spec.api_key())

    def _connect(self, config: EngineConfig, spec: providers.RemoteSpec, key: str | None
                 ) -> None:
        self.config = config
        self.spec = spec
        headers = {"user-agent": "llmos"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.spec.base_url, headers=headers,
            timeout=httpx.Timeout(connect=self.spec.connect_timeout_s, read=None,
                                  write=60.0, pool=None),
            limits=httpx.Limits(max_connections=config.slots,
                                max_keepalive_connections=config.slots))
        self._calls: dict[int, _Call] = {}
        self._calls_lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="remote-watch", daemon=True)
        self._watcher.start()
        log.info("%s engine: %s at %s (key %s)", type(self).__name__, self.spec.model,
                 self.spec.base_url,
                 "from $" + self.spec.api_key_env if self.spec.api_key_env
                 else "from a file" if self.spec.api_key_file else "none")

    # generation ----------------------------------------------------------------------

    def generate(self, kind: Kind, body: dict[str, Any], on_event: EventCallback
                 ) -> GenerationResult:
        upstream = self._body(body)
        upstream |= {"stream": True, "stream_options": {"include_usage": True}}
        path = "/chat/completions" if kind == "chat" else "/completions"
        call = _Call(on_event)
        with self._calls_lock:
            self._calls[id(call)] = call
        try:
            return self._generate(kind, path, upstream, call)
        finally:
            with self._calls_lock:
                self._calls.pop(id(call), None)

    def _generate(self, kind: Kind, path: str, upstream: dict[str, Any], call: _Call
                  ) -> GenerationResult:
        attempt = 0
        while True:
            reader = _Reader(kind, call)
            try:
                with self._client.stream("POST", path, json=upstream) as response:
                    with call.lock:
                        if call.stopped:
                            return reader.result()
                        call.response = response
                    if response.status_code != 200:
                        raise self._refusal(response)
                    reader.read(response.iter_lines())
                    return reader.result()
            except _Retry as retry:
                attempt += 1
                if attempt > self.spec.max_retries:
                    raise retry.final or ProviderError(
                        f"the provider failed {attempt} times: {retry.reason}") from None
                if self._wait(self._delay(attempt, retry.after_s), call):
                    return reader.result()
            except Exception as exc:
                if call.stopped:  # closed by the watcher: the client left or time ran out
                    return reader.result()
                if not isinstance(exc, httpx.HTTPError | httpx.StreamError):
                    raise
                if reader.sent:
                    raise ProviderError(
                        f"the provider's stream broke off after {reader.completion_tokens} "
                        f"tokens ({type(exc).__name__}: {exc})") from None
                attempt += 1
                if attempt > self.spec.max_retries:
                    raise self._unreachable(exc, attempt) from None
                if self._wait(self._delay(attempt, None), call):
                    return reader.result()
            finally:
                call.response = None

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        forward = providers.OPENAI_PARAMETERS | set(self.spec.forward)
        upstream = {k: v for k, v in body.items() if k in forward}
        upstream["model"] = self.spec.model
        return upstream

    # failures and retries ---------------------------------------------------------------

    def _refusal(self, response: httpx.Response) -> _Retry | LLMOSError:
        """What a non-200 answer means: try again (429, 5xx), or fail with its words."""
        response.read()
        status = response.status_code
        message = _message(response)
        after = _retry_after(response.headers.get("retry-after"))
        if status in RETRIED:
            final: LLMOSError = ProviderError(
                f"the provider answered {status} until LLMOS gave up: {message}",
                status=429 if status == 429 else 502,
                code="provider_rate_limited" if status == 429 else None,
                retry_after_s=math.ceil(after) if after else None)
            return _Retry(f"{status}: {message}", after, final)
        if status in (401, 403):
            return ProviderError(f"the provider refused LLMOS's API key ({status}): {message}")
        if status == 404:
            return ProviderError(f"the provider has no {self.spec.model!r} or no such "
                                 f"endpoint ({status}): {message}")
        if 400 <= status < 500:
            return BadRequest(f"the provider refused the request ({status}): {message}")
        return ProviderError(f"the provider answered {status}: {message}")

    def _unreachable(self, exc: Exception, attempts: int) -> ProviderError:
        return ProviderError(f"the provider at {self.spec.base_url} could not be reached "
                             f"({attempts} tries; {type(exc).__name__}: {exc})")

    @staticmethod
    def _delay(attempt: int, retry_after_s: float | None) -> float:
        """Full jitter on an exponential backoff; never less than Retry-After asks."""
        backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))
        if retry_after_s is not None:
            return retry_after_s + backoff / 10
        return backoff

    @staticmethod
    def _wait(seconds: float, call: _Call) -> bool:
        """Sleep before a retry; True when the request must stop instead."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if call.stop_if_asked():
                return True
            time.sleep(min(WATCH_S, left))
        return call.stop_if_asked()

    def _watch(self) -> None:
        while not self._closed.wait(WATCH_S):
            with self._calls_lock:
                calls = list(self._calls.values())
            for call in calls:
                try:
                    call.stop_if_asked()
                except Exception:  # (a callback's bug must not end the watcher)
                    log.exception("remote engine: a stop check failed")

    # embeddings ---------------------------------------------------------------------------

    def embed(self, inputs: Sequence[str | list[int]]) -> Embedded:
        if not self.config.embedding:
            raise BadRequest("this deployment is set for generation, not embeddings")
        request = {"model": self.spec.model, "input": list(inputs), "encoding_format": "float"}
        attempt = 0
        while True:
            try:
                response = self._client.post("/embeddings", json=request)
                if response.status_code == 200:
                    break
                refusal = self._refusal(response)
                if not isinstance(refusal, _Retry):
                    raise refusal
                reason, after = refusal.reason, refusal.after_s
                final: LLMOSError | None = refusal.final
            except httpx.HTTPError as exc:
                reason, after, final = str(exc), None, self._unreachable(exc, attempt + 1)
            attempt += 1
            if attempt > self.spec.max_retries:
                raise final or ProviderError(f"the provider failed: {reason}")
            time.sleep(self._delay(attempt, after))
        try:
            answer = response.json()
            data = sorted(answer["data"], key=lambda item: item["index"])
            vectors = [_unit([float(x) for x in item["embedding"]]) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"the provider's embeddings could not be read: {exc}") from None
        if len(vectors) != len(inputs):
            raise ProviderError(f"the provider sent {len(vectors)} embeddings for "
                                f"{len(inputs)} inputs")
        usage = answer.get("usage") or {}
        return Embedded(vectors, int(usage.get("prompt_tokens") or 0))

    def close(self) -> None:
        self._closed.set()
        self._client.close()


class _Reader:
    """An OpenAI-style event stream, as engine events."""

    def __init__(self, kind: Kind, call: _Call) -> None:
        self.kind = kind
        self.call = call
        self.sent = False
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.counted = 0
        self.usage_seen = False

    def read(self, lines: Iterator[str]) -> None:
        for line in lines:
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise ProviderError(f"the provider sent an event that is not JSON: "
                                    f"{excerpt(data)}") from None
            if "error" in chunk:
                error = chunk["error"]
                text = error.get("message") if isinstance(error, dict) else error
                raise ProviderError(f"the provider failed mid-answer: {text}")
            if self._on_chunk(chunk):
                return
        if self.finish_reason is None and not self.call.stopped:
            raise ProviderError("the provider's stream ended before the answer did "
                                f"(after {self.completion_tokens} tokens)")

    def _on_chunk(self, chunk: dict[str, Any]) -> bool:
        usage = chunk.get("usage")
        if usage:
            self.usage_seen = True
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            text = delta.get("content") if self.kind == "chat" else choice.get("text")
            calls = tuple(delta.get("tool_calls") or ()) if self.kind == "chat" else ()
            logprobs = _logprobs(choice.get("logprobs"))
            if text or calls or logprobs:
                self.sent = True
                self.counted += 1
                if not self.usage_seen:
                    self.completion_tokens = self.counted
                if self.call.on_event(TextDelta(text or "", logprobs, calls)):
                    self.call.stopped = True
                    return True
        return False

    def result(self) -> GenerationResult:
        return GenerationResult(
            finish_reason=self.finish_reason or ("cancelled" if self.call.stopped else "stop"),
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            stopped=self.call.stopped)


def _logprobs(given: Any) -> tuple[dict[str, Any], ...]:
    """Chat's per-token shape (``content``), or the completions API's older columns."""
    if not isinstance(given, dict):
        return ()
    if given.get("content"):
        return tuple(given["content"])
    tokens = given.get("tokens") or ()
    values = given.get("token_logprobs") or ()
    tops = given.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        {"token": token, "logprob": value, "bytes": list(token.encode()),
         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                          for t, v in (top or {}).items()]}
        for token, value, top in zip(tokens, values, tops, strict=False))


def _hang_up(response: httpx.Response) -> None:
    """End a response another thread may be blocked reading: shut its socket down (a
    plain close leaves that read waiting for the upstream's next byte)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = (error.get("message") if isinstance(error, dict) else error) or body
    except ValueError:
        text = response.text
    return excerpt(str(text), 200)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date), at most a minute."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(60.0, max(0.0, seconds))


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
