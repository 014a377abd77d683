"""The real `llmos` command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningServer, free_port


def llmos(*args: str, stdin: str = "", env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmos", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env=os.environ | (env or {}))


def test_help_lists_the_commands() -> None:
    result = llmos("--help")
    assert result.returncode == 0
    for command in ("serve", "worker", "workers", "chat", "version"):
        assert command in result.stdout
    serve_help = llmos("serve", "--help")
    assert "--port" in serve_help.stdout and "--insecure" in serve_help.stdout


def test_version_without_a_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = llmos("version", "--url", url)
    assert result.returncode == 2  # (a script can tell: no server)
    assert result.stdout.startswith("llmos ")
    assert "no server answers" in result.stderr


def test_a_worker_on_the_in_process_bus_is_refused(tmp_path: Path) -> None:
    result = llmos("worker", "--bus", "memory://", env={"LLMOS_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "reachable by nobody" in result.stderr


def test_chat_without_a_server_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = llmos("chat", stdin="hello\n", env={"LLMOS_URL": url})
    assert result.returncode == 2
    assert "No LLMOS server answers" in result.stderr
    assert "llmos serve" in result.stderr


def test_non_loopback_bind_is_refused_without_a_key_or_insecure(tmp_path: Path) -> None:
    result = llmos("serve", "--host", "0.0.0.0", "--port", str(free_port()), timeout=30,
                   env={"LLMOS_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--insecure" in result.stderr and "--init-admin-key" in result.stderr


def test_chat_streams_an_answer(llmos_server: RunningServer) -> None:
    result = llmos("chat", "--url", llmos_server.url, "--max-tokens", "8",
                   stdin="Hello there\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "Chatting with gemma-3-270m" in result.stderr
    assert len(result.stdout.strip()) > 0


def test_chat_reports_an_unknown_model(llmos_server: RunningServer) -> None:
    result = llmos("chat", "--url", llmos_server.url, "--model", "nope", stdin="hi\n")
    assert result.returncode == 1
    # before the first prompt, with what the server does serve
    assert "nope" in result.stderr and "gemma-3-270m" in result.stderr
    assert "Chatting" not in result.stderr


def test_version_reports_the_server(llmos_server: RunningServer) -> None:
    result = llmos("version", "--url", llmos_server.url)
    assert f"server {llmos_server.url}: llmos" in result.stdout


def test_worker_with_an_unknown_bus_scheme_lists_the_known_ones(tmp_path: Path) -> None:
    result = llmos("worker", "--bus", "kafak://127.0.0.1:9092", "--home", str(tmp_path))
    assert result.returncode == 2
    assert "unknown bus URL scheme kafak://" in result.stderr
    assert "amqp://" in result.stderr and "memory://" in result.stderr


def test_worker_without_a_broker_says_so(tmp_path: Path) -> None:
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    result = llmos("worker", "--bus", url, "--home", str(tmp_path))
    assert result.returncode == 2
    assert "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1" in result.stderr
    assert "secret" not in result.stderr


def test_serve_takes_host_and_port_from_the_environment(tmp_path: Path) -> None:
    env = os.environ | {"LLMOS_HOME": str(tmp_path), "LLMOS_HOST": "0.0.0.0",
                        "LLMOS_PORT": "8123"}
    result = subprocess.run([sys.executable, "-m", "llmos", "serve"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr  # the env's host, not a default


def test_ps_says_what_runs_where(llmos_server: RunningServer) -> None:
    import json

    url = ("--url", llmos_server.url)
    [row] = json.loads(llmos("ps", "-o", "json", *url).stdout)
    assert (row["deployment"], row["slots"], row["state"]) == ("gemma-3-270m", 16, "ready")
    # (busy as of the worker's last heartbeat: other tests share this server)
    assert 0 <= row["busy_slots"] <= 16 and row["node"] and row["started_at"]
    plain = llmos("ps", *url).stdout.splitlines()
    assert plain[0].split()[:3] == ["DEPLOYMENT", "MODEL", "REPLICA"]
    assert llmos("ps", "-q", *url).stdout.split() == [row["replica"]]


def test_run_answers_one_prompt_or_names_what_is_served(llmos_server: RunningServer) -> None:
    url = ("--url", llmos_server.url)
    answered = llmos("run", "gemma-3-270m", "Count: 1, 2, 3,", "--max-tokens", "4", *url)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip()
    unknown = llmos("run", "nope", "hi", *url)
    assert unknown.returncode == 1 and "gemma-3-270m" in unknown.stderr


def test_shell_completion_is_offered() -> None:
    assert "--install-completion" in llmos("--help").stdout
