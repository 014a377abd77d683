"""The remote engine against a scripted OpenAI-compatible endpoint: retries, Retry-After,
failures in its words, streams cut off, stopping a silent upstream, embeddings."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.engines.base import EngineConfig, EngineEvent, PromptProgress, TextDelta
from llmos.engines.remote import RemoteEngine
from llmos.errors import BadRequest, ConfigError, ProviderError
from tests.fake_provider import FakeProvider, Reply, fake_provider


def engine_for(provider: FakeProvider, tmp_path: Path, **spec: Any) -> RemoteEngine:
    embedding = bool(spec.pop("_embedding", False))
    path = tmp_path / "remote.json"
    path.write_text(json.dumps({"base_url": provider.url, "model": "up-model"} | spec))
    return RemoteEngine(EngineConfig(model_path=path, slots=4, ctx_size=0,
                                     embedding=embedding))


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("FAKE_PROVIDER_KEY", "sk-very-secret-123")
    yield "FAKE_PROVIDER_KEY"


class Collect:
    def __init__(self, stop_after: int | None = None) -> None:
        self.texts: list[str] = []
        self.stop_after = stop_after
        self.stop = threading.Event()

    def __call__(self, event: EngineEvent) -> bool:
        if isinstance(event, TextDelta):
            self.texts.append(event.text)
            if self.stop_after is not None and len(self.texts) >= self.stop_after:
                return True
        return self.stop.is_set()


def test_streams_each_chunk_with_the_key_and_only_openais_parameters(
        tmp_path: Path, key_env: str) -> None:
    with fake_provider(Reply(words=("a", "b", "c"))) as provider:
        engine = engine_for(provider, tmp_path, api_key_env=key_env, forward=["top_k"])
        seen = Collect()
        result = engine.generate("chat", {"messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 5, "top_k": 3, "min_p": 0.1}, seen)
        engine.close()
    assert seen.texts == ["a", "b", "c"]
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == \
        ("stop", 5, 3)
    sent = provider.seen[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-very-secret-123"
    assert sent.body["model"] == "up-model" and sent.body["stream"] is True
    assert sent.body["top_k"] == 3 and "min_p" not in sent.body  # forwarded only if named


def test_a_429_is_tried_again_after_its_retry_after(tmp_path: Path) -> None:
    with fake_provider(Reply(429, {"retry-after": "1"}), Reply(words=("ok",))) as provider:
        engine = engine_for(provider, tmp_path)
        seen = Collect()
        result = engine.generate("completion", {"prompt": "x", "max_tokens": 2}, seen)
        engine.close()
    assert seen.texts == ["ok"] and result.finish_reason == "stop"
    assert len(provider.seen) == 2
    assert provider.seen[1].at - provider.seen[0].at >= 1.0  # Retry-After honoured
    assert provider.seen[1].path == "/v1/completions"


def test_5xx_are_tried_again_with_backoff_then_fail_in_words(tmp_path: Path) -> None:
    with fake_provider(Reply(503)) as provider:
        engine = engine_for(provider, tmp_path, max_retries=2)
        with pytest.raises(ProviderError) as failed:
            engine.generate("chat", {"messages": []}, Collect())
        engine.close()
    assert len(provider.seen) == 3
    assert failed.value.status == 502 and "503" in failed.value.message


def test_a_429_that_lasts_is_a_429_with_its_retry_after(tmp_path: Path) -> None:
    with fake_provider(Reply(429, {"retry-after": "0"})) as provider:
        engine = engine_for(provider, tmp_path, max_retries=1)
        with pytest.raises(ProviderError) as failed:
            engine.generate("chat", {"messages": []}, Collect())
        engine.close()
    assert failed.value.status == 429 and failed.value.code == "provider_rate_limited"


def test_a_400_is_the_clients_and_is_not_tried_again(tmp_path: Path) -> None:
    with fake_provider(Reply(400)) as provider:
        engine = engine_for(provider, tmp_path)
        with pytest.raises(BadRequest, match="scripted 400"):
            engine.generate("chat", {"messages": []}, Collect())
        engine.close()
    assert len(provider.seen) == 1


def test_a_refused_key_says_so_and_shows_no_key(tmp_path: Path, key_env: str) -> None:
    with fake_provider(Reply(401)) as provider:
        engine = engine_for(provider, tmp_path, api_key_env=key_env)
        with pytest.raises(ProviderError) as failed:
            engine.generate("chat", {"messages": []}, Collect())
        engine.close()
    assert "API key" in failed.value.message and "sk-very" not in failed.value.message


def test_a_stream_cut_mid_answer_is_an_error_not_a_short_answer(tmp_path: Path) -> None:
    with fake_provider(Reply(words=("a", "b", "c", "d"), cut_after=2)) as provider:
        engine = engine_for(provider, tmp_path)
        seen = Collect()
        with pytest.raises(ProviderError, match=r"broke off|ended before"):
            engine.generate("chat", {"messages": []}, seen)
        engine.close()
    assert seen.texts == ["a", "b"] and len(provider.seen) == 1  # never sent twice


def test_a_silent_upstream_is_left_when_the_request_must_stop(tmp_path: Path) -> None:
    with fake_provider(Reply(words=("a", "b"), every_s=30)) as provider:
        engine = engine_for(provider, tmp_path)
        seen = Collect()
        threading.Timer(0.5, seen.stop.set).start()
        started = time.monotonic()
        result = engine.generate("chat", {"messages": []}, seen)
        took = time.monotonic() - started
        engine.close()
    assert result.stopped and took < 5


def test_cancelled_while_waiting_to_retry(tmp_path: Path) -> None:
    with fake_provider(Reply(429, {"retry-after": "30"})) as provider:
        engine = engine_for(provider, tmp_path)
        seen = Collect()
        threading.Timer(0.3, seen.stop.set).start()
        started = time.monotonic()
        result = engine.generate("chat", {"messages": []}, seen)
        engine.close()
    assert result.stopped and time.monotonic() - started < 3


def test_an_unreachable_provider_fails_in_words(tmp_path: Path) -> None:
    path = tmp_path / "remote.json"
    path.write_text(json.dumps({"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                "max_retries": 1}))
    engine = RemoteEngine(EngineConfig(model_path=path, ctx_size=0))
    with pytest.raises(ProviderError, match="could not be reached"):
        engine.generate("chat", {"messages": []}, Collect())
    engine.close()


def test_embeddings_in_order_and_of_unit_length(tmp_path: Path) -> None:
    with fake_provider(Reply(embeddings=[[3.0, 4.0], [0.0, 2.0]])) as provider:
        engine = engine_for(provider, tmp_path, _embedding=True)
        embedded = engine.embed(["one", "two"])
        engine.close()
    assert embedded.vectors == [[0.6, 0.8], [0.0, 1.0]] and embedded.prompt_tokens == 6
    assert provider.seen[0].path == "/v1/embeddings"
    assert engine.capabilities == frozenset({"embeddings"})


def test_a_missing_key_variable_stops_the_replica_in_words(tmp_path: Path) -> None:
    path = tmp_path / "remote.json"
    path.write_text(json.dumps({"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                "api_key_env": "NO_SUCH_KEY_VARIABLE_HERE"}))
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VARIABLE_HERE"):
        RemoteEngine(EngineConfig(model_path=path, ctx_size=0))


def test_progress_events_are_the_only_stop_checks(tmp_path: Path) -> None:
    asked: list[EngineEvent] = []
    with fake_provider(Reply(words=("x",), every_s=0.35)) as provider:
        engine = engine_for(provider, tmp_path)
        engine.generate("chat", {"messages": []},
                        lambda e: asked.append(e) or False)  # type: ignore[func-returns-value]
        engine.close()
    assert any(isinstance(e, PromptProgress) for e in asked)  # the watcher asked meanwhile
