"""A real server with keys: `--init-admin-key`, the official client with and without a
key, and `llmos keys` / `whoami` with roles."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from llmos.auth.roles import Role
from llmos.server import init_admin_key
from llmos.settings import Settings
from llmos.store import Store
from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, start_server, stop_server
from tests.waiting import wait_until

MODEL = "gemma-3-270m"


@dataclass
class Guarded:
    server: RunningServer
    admin: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    home = tmp_path_factory.mktemp("guarded")
    server = start_server(home, {"LLMOS_ENGINE__SLOTS": "2", "LLMOS_ENGINE__CTX_SIZE": "1024"},
                          args=["--init-admin-key"])
    try:
        token = (home / "admin.key").read_text().strip()
        assert (home / "admin.key").stat().st_mode & 0o077 == 0  # (its owner's only)
        assert token not in server.log.read_text()  # (in the file, never in the logs)
        yield Guarded(server, token)
    finally:
        stop_server(server)


def said(text: str) -> str:
    """Console text as one line (rich folds it at the terminal's width)."""
    return " ".join(text.split())


def test_the_official_client_needs_a_key(guarded: Guarded) -> None:
    with openai.OpenAI(base_url=guarded.server.api, api_key="llmos-wrong", max_retries=0
                       ) as stranger, pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.status_code == 401
    assert refused.value.response.json()["error"]["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=guarded.server.api, api_key=guarded.admin,
                       max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.usage is not None and answer.usage.completion_tokens > 0


def test_keys_through_the_cli(guarded: Guarded) -> None:
    url = ["--url", guarded.server.url]
    as_admin = {"LLMOS_API_KEY": guarded.admin}
    made = llmos("keys", "create", "alice", "--role", "user", "--expires", "1d", *url,
                 env=as_admin)
    assert made.returncode == 0, made.stderr
    alice = made.stdout.strip()
    assert alice.startswith("llmos-") and "shown only this once" in said(made.stderr)
    me = llmos("whoami", *url, env={"LLMOS_API_KEY": alice})
    assert me.stdout.startswith("key ") and "user in project default" in me.stdout
    assert llmos("deployments", "ls", "-q", *url, env={"LLMOS_API_KEY": alice}
                 ).stdout.split() == [MODEL]
    refused = llmos("workers", "ls", *url, env={"LLMOS_API_KEY": alice})
    assert refused.returncode == 1 and "error 403" in refused.stderr
    assert "needs the admin role" in said(refused.stderr)
    nobody = llmos("models", "ls", *url, env={"LLMOS_API_KEY": ""})
    assert nobody.returncode == 1 and "error 401" in nobody.stderr
    listed = llmos("keys", "ls", "-o", "json", *url, env=as_admin)
    keys = {k["name"]: k for k in json.loads(listed.stdout)}
    assert set(keys) == {"admin", "alice"} and keys["alice"]["expires_at"] > time.time()
    assert alice not in listed.stdout
    flag = llmos("--api-key", guarded.admin, "keys", "revoke", keys["alice"]["id"], *url)
    assert flag.returncode == 0, flag.stderr
    gone = llmos("whoami", *url, env={"LLMOS_API_KEY": alice})
    assert gone.returncode == 1 and "revoked" in gone.stderr


def test_init_admin_key_makes_one_only_while_no_live_admin_key_exists(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_url)
    store.migrate()
    init_admin_key(settings, store)
    first = (tmp_path / "admin.key").read_text()
    init_admin_key(settings, store)
    assert (tmp_path / "admin.key").read_text() == first and len(store.keys.list()) == 1
    [row] = store.keys.list()
    store.keys.revoke(row.id, time.time())
    init_admin_key(settings, store)  # the only admin key was revoked: a new one
    assert (tmp_path / "admin.key").read_text() != first
    assert [k.role for k in store.keys.list()] == [Role.admin.name] * 2
    store.close()


def test_a_key_over_its_limit_gets_openais_rate_limit_error(guarded: Guarded) -> None:
    url = ["--url", guarded.server.url]
    made = llmos("keys", "create", "bob", "--rpm", "1", *url,
                 env={"LLMOS_API_KEY": guarded.admin})
    assert made.returncode == 0, made.stderr
    bob = made.stdout.strip()
    wait_until(lambda: httpx.get(f"{guarded.server.url}/api/whoami", timeout=10,
                                 headers={"authorization": f"Bearer {bob}"}).status_code == 200,
               10, 0.05, what="the new key known")  # (every gateway reloads keys in 0.5 s)
    with openai.OpenAI(base_url=guarded.server.api, api_key=bob, max_retries=0) as client:
        client.completions.create(model=MODEL, prompt="1, 2,", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as limited:
            client.completions.create(model=MODEL, prompt="1, 2,", max_tokens=2)
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-limit-requests"] == "1"
    used = json.loads(llmos("usage", "-o", "json", *url,
                            env={"LLMOS_API_KEY": bob}).stdout)
    assert [(u["requests"], u["tokens"] > 0) for u in used] == [(1, True)]
