"""Remote providers as deployments: an LLMOS (``relay``, no model of its own) serves
models whose engine is an OpenAI-compatible endpoint elsewhere:

- a second LLMOS instance (the session's ``roomy_server``);
- llama.cpp's own server (``xllamacpp``) with an API key the relay reads from its
  environment, which never reaches its logs;
- a scripted endpoint for a 429 on cue (tests/fake_provider.py).

Through the official client: greedy answers equal to asking the provider directly,
streamed chunk by chunk; the provider killed mid-stream is an explicit error; a 429 is
retried after its Retry-After."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, start_server, stop_process, stop_server
from tests.fake_provider import FakeProvider, Reply, fake_provider
from tests.model import gemma_path
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEY_VARIABLE = "LLMOS_TEST_PROVIDER_KEY"


def start_llamacpp(model: Path, slots: int = 2) -> tuple[subprocess.Popen[str], str, str]:
    """llama.cpp's own server (benchmarks/_llamacpp_server.py): process, API root, key."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "_llamacpp_server.py"), str(model),
         str(slots), "1", str(512 * slots), "0",
         str(ROOT / "src" / "llmos" / "registry" / "chat_templates" / "gemma.jinja")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    return process, f"{info['url']}/v1", info["key"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gemma_path(tmp_path_factory)


@pytest.fixture(scope="module")
def llamacpp(model_file: Path) -> Iterator[tuple[str, str]]:
    process, url, key = start_llamacpp(model_file)
    try:
        yield url, key
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.stdout.close()
        stop_process(process)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with fake_provider(Reply(429, {"retry-after": "1"}), Reply(words=("after", " a", " 429"))
                       ) as provider:
        yield provider


def add_remote(relay: RunningServer, name: str, url: str, model: str, *extra: str,
               settings: dict[str, object] | None = None) -> None:
    made = llmos("models", "remote", name, "--base-url", url, "--model", model, *extra,
                 "--url", relay.url)
    assert made.returncode == 0, made.stderr + made.stdout
    created = httpx.post(f"{relay.url}/api/deployments", timeout=30, json={
        "name": name, "model": name, "settings": {"slots": 4} | (settings or {})})
    assert created.status_code == 201, created.text


def wait_ready(server: RunningServer, name: str) -> None:
    def ready() -> bool:
        placed = httpx.get(f"{server.url}/api/deployments/{name}", timeout=30).json()["placed"]
        return bool(placed) and placed[0]["state"] == "ready"
    wait_until(ready, 60, 0.2, what=f"{name} ready")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, roomy_server: RunningServer,
          llamacpp: tuple[str, str], fake: FakeProvider) -> Iterator[RunningServer]:
    url, key = llamacpp
    server = start_server(tmp_path_factory.mktemp("relay"), ready_path="/api/models",
                          extra_env={"LLMOS_DEFAULT_MODEL": "", KEY_VARIABLE: key})
    try:
        add_remote(server, "via-llmos", roomy_server.api, "gemma-3-270m")
        add_remote(server, "via-llamacpp", url, "gemma", "--api-key-env", KEY_VARIABLE)
        add_remote(server, "via-fake", fake.url, "scripted")
        for name in ("via-llmos", "via-llamacpp", "via-fake"):
            wait_ready(server, name)
        yield server
    finally:
        stop_server(server)


def client_of(base: str, key: str = "none") -> OpenAI:
    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)


QUESTION = [{"role": "user", "content": "Name three colours."}]


def test_a_remote_model_says_what_it_is(relay: RunningServer) -> None:
    shown = json.loads(llmos("models", "show", "via-llamacpp", "-o", "json", "--url",
                             relay.url).stdout)["version"]
    assert shown["engine"] == "remote" and shown["config"] == {"format": "remote"}
    assert shown["capabilities"] == ["chat", "completions", "tools"]
    assert shown["chat_template"] is None
    listed = {m.id: m for m in client_of(relay.api).models.list()}
    assert listed["via-llmos"].model_extra == {"capabilities": ["chat", "completions", "tools"],
                                              "engine": "remote"}


def test_a_second_llmos_as_provider_streams_through(relay: RunningServer,
                                                    roomy_server: RunningServer) -> None:
    asked = {"messages": QUESTION, "max_tokens": 12, "temperature": 0.0}
    with client_of(roomy_server.api) as direct, client_of(relay.api) as through:
        # (the first answer to a prompt can differ from later ones by a token: llama.cpp's
        # numbers differ slightly between a cold prompt and one in its cache)
        direct.chat.completions.create(model="gemma-3-270m", **asked)
        expected = direct.chat.completions.create(model="gemma-3-270m", **asked)
        chunks = list(through.chat.completions.create(
            model="via-llmos", stream=True, stream_options={"include_usage": True}, **asked))
        plain = through.chat.completions.create(model="via-llmos", **asked)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens  # type: ignore[union-attr]
    assert plain.usage.prompt_tokens == expected.usage.prompt_tokens  # type: ignore[union-attr]


def test_llamacpps_server_as_provider_with_a_key_never_logged(
        relay: RunningServer, llamacpp: tuple[str, str]) -> None:
    url, key = llamacpp
    with client_of(url, key) as direct, client_of(relay.api) as through:
        for _ in range(2):  # (the second: with the prompt in llama.cpp's cache, as below)
            expected = direct.completions.create(model="gemma", prompt="1, 2, 3,",
                                                 max_tokens=8, temperature=0.0)
        got = through.completions.create(model="via-llamacpp", prompt="1, 2, 3,",
                                         max_tokens=8, temperature=0.0)
        streamed = "".join(c.choices[0].text for c in through.completions.create(
            model="via-llamacpp", prompt="1, 2, 3,", max_tokens=8, temperature=0.0,
            stream=True) if c.choices)
        chat = through.chat.completions.create(model="via-llamacpp", messages=QUESTION,
                                               max_tokens=6)
    assert got.choices[0].text == expected.choices[0].text == streamed
    assert chat.choices[0].message.content
    logs = relay.log.read_text() + "".join(
        p.read_text() for p in (relay.home / "logs").glob("*.log"))
    assert key not in logs


def test_a_429_from_upstream_is_retried_after_its_retry_after(relay: RunningServer,
                                                             fake: FakeProvider) -> None:
    before = len(fake.seen)
    with client_of(relay.api) as through:
        answer = through.chat.completions.create(model="via-fake", messages=QUESTION)
    assert answer.choices[0].message.content == "after a 429"
    tries = fake.seen[before:]
    assert len(tries) == 2 and tries[1].at - tries[0].at >= 1.0


def test_a_provider_killed_mid_stream(relay: RunningServer, model_file: Path,
                                      tmp_path: Path) -> None:
    # A provider of its own, open (no key), so the kill hurts no other test.
    process = subprocess.Popen(
        [sys.executable, "-c", KEYLESS, str(model_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"] + "/v1"
        add_remote(relay, "mortal", url, "gemma", settings={"slots": 1})
        wait_ready(relay, "mortal")
        pieces: list[str] = []
        with client_of(relay.api) as through, pytest.raises(openai.APIError) as failed:
            for chunk in through.chat.completions.create(
                    model="mortal", messages=QUESTION, max_tokens=400, stream=True,
                    extra_body={"ignore_eos": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    if len(pieces) == 3:
                        process.kill()  # kill -9, mid-answer
        took_pieces = len(pieces)
        assert 3 <= took_pieces < 400
        assert "provider" in str(failed.value)
    finally:
        stop_process(process)  # type: ignore[arg-type]
        if process.stdout is not None:
            process.stdout.close()


KEYLESS = """
import json, sys, xllamacpp
p = xllamacpp.CommonParams()
p.model.path = sys.argv[1]
p.n_parallel = 1
p.n_ctx = 1024
p.cpuparams.n_threads = 1
p.cpuparams_batch.n_threads = 1
p.n_predict = -1
p.ui = False
server = xllamacpp.Server(p)
print(json.dumps({"url": server.listening_address}), flush=True)
import time
while True:
    time.sleep(60)
"""


def test_a_provider_that_refuses_the_key_says_so(relay: RunningServer,
                                                 llamacpp: tuple[str, str]) -> None:
    url, _ = llamacpp
    add_remote(relay, "keyless", url, "gemma")  # llama.cpp's server wants its key
    wait_ready(relay, "keyless")
    with client_of(relay.api) as through, pytest.raises(openai.APIStatusError) as refused:
        through.chat.completions.create(model="keyless", messages=QUESTION, max_tokens=4)
    assert refused.value.status_code == 502 and "API key" in refused.value.message


def test_a_bad_spec_is_refused_at_import(relay: RunningServer) -> None:
    made = llmos("models", "remote", "bad", "--base-url", "ftp://x", "--model", "m",
                 "--url", relay.url)
    assert made.returncode != 0 and "base_url" in made.stderr + made.stdout
