"""Client profiles: `llmos config` stores a server address and an API key per profile;
commands use them, and LLMOS_URL / LLMOS_API_KEY override them."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmos.cli import profiles
from tests.cli.test_cli import llmos


class Recorder(ThreadingHTTPServer):
    seen: list[str | None]


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"status": "ok", "version": "9.9.9"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A stand-in server that notes the Authorization header of each request."""
    server = Recorder(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server: Recorder) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_profiles_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    config = profiles.Profiles(current="a b", profiles={
        "a b": {"url": "http://x:1", "api_key": 'k"ey\\'}, "other": {"url": "http://y"}})
    profiles.save(config, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert profiles.load(path) == config
    assert profiles.load(tmp_path / "none.toml") == profiles.Profiles()


def test_commands_use_the_current_profile_and_the_environment_overrides_it(
        tmp_path: Path, recorder: Recorder) -> None:
    env = {"LLMOS_CONFIG": str(tmp_path / "config.toml"), "LLMOS_URL": "",
           "LLMOS_API_KEY": ""}
    made = llmos("config", "set", "--url", url_of(recorder), "--api-key", "llmos-secret-1",
                 env=env)
    assert made.returncode == 0, made.stderr
    assert llmos("config", "set", "--profile", "other", "--url", "http://127.0.0.1:9",
                 env=env).returncode == 0
    listed = llmos("config", "ls", "-o", "json", env=env)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["current"]) for r in rows] == [("default", True), ("other", False)]
    assert "secret" not in listed.stdout  # (keys are masked)

    answer = llmos("version", env=env)
    assert answer.returncode == 0 and "9.9.9" in answer.stdout
    assert recorder.seen == ["Bearer llmos-secret-1"]

    overridden = llmos("version", env=env | {"LLMOS_API_KEY": "llmos-from-env"})
    assert overridden.returncode == 0 and recorder.seen[-1] == "Bearer llmos-from-env"

    elsewhere = llmos("--profile", "other", "version", env=env)
    assert elsewhere.returncode == 2  # (nothing listens on port 9)
    assert llmos("config", "use", "other", env=env).returncode == 0
    assert llmos("version", env=env | {"LLMOS_URL": url_of(recorder)}).returncode == 0
    assert recorder.seen[-1] is None  # profile "other" has no key

    unknown = llmos("--profile", "nope", "version", env=env)
    assert unknown.returncode == 2 and "no profile 'nope'" in unknown.stderr
