"""schemathesis against the OpenAPI schema of a throwaway `llmos serve` that needs keys,
sent an admin's: every check on, response conformance included, bounded in examples;
zero failures. (``ignored_auth`` sends each operation that declares security with no
key, and with a bad one, and expects the 401.)

(``schemathesis.toml`` beside this file says which operations may also answer a
schema-valid request with a 400, and why.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, start_server, stop_server

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("schemathesis-home"), extra_env={
        "LLMOS_ENGINE__SLOTS": "8", "LLMOS_ENGINE__MAX_TOKENS_LIMIT": "16",
        "LLMOS_ENGINE__DEFAULT_MAX_TOKENS": "8"}, args=["--init-admin-key"])
    try:
        yield server
    finally:
        stop_server(server)


@pytest.mark.timeout(600)
def test_every_operation_conforms_to_the_schema(throwaway: RunningServer,
                                                tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    key = (throwaway.home / "admin.key").read_text().strip()
    done = subprocess.run(
        [st, "--config-file", str(CONFIG), "run", f"{throwaway.url}/openapi.json",
         "--header", f"Authorization: Bearer {key}",
         "--checks", "all", "--max-examples", "20", "--generation-deterministic",
         "--phases", "examples,coverage,fuzzing",
         "--request-timeout", "60"],
        capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.timeout(300)
def test_every_operation_conforms_without_a_key(throwaway: RunningServer,
                                                tmp_path: Path) -> None:
    """The same server, sent no key: every operation that needs one answers the 401 its
    schema declares (never a 5xx, never a 200 that leaks), the open ones answer."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    done = subprocess.run(
        [st, "--config-file", str(CONFIG), "run", f"{throwaway.url}/openapi.json",
         "--checks", "all", "--max-examples", "5", "--generation-deterministic",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
