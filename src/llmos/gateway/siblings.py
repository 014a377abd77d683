"""The extra gateway processes of ``--workers N``.

Each is the same command line run again with ``LLMOS_GATEWAY_PROCESS`` set: it builds
the same settings the same way, and serves only the API (no controller, no node), on
the same address as the first process (every one binds with ``SO_REUSEPORT``, and the
kernel spreads new connections over them), with its own event loop, bus connection
and reply queue. A request's answer comes back to the process that holds its client,
because that process's reply queue is the one the request names. One that exits while
the server runs is started again."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

from llmos.errors import ConfigError

log = logging.getLogger(__name__)

GATEWAY_PROCESS_ENV = "LLMOS_GATEWAY_PROCESS"
"""Set (to its index, 1..N-1) in an extra gateway process's environment."""

COMMANDS = ("serve", "control")


def is_sibling() -> bool:
    return bool(os.environ.get(GATEWAY_PROCESS_ENV))


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other processes may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def check_workers(workers: int, bus_url: str) -> None:
    if workers > 1 and bus_url.startswith("memory:"):
        raise ConfigError(
            f"--workers {workers} needs a networked bus (--bus amqp://…, nats://…, "
            "redis://…, kafka://…): the in-process bus memory:// lives in one process, "
            "so a request taken by another gateway process could not reach a replica")
    if workers > 1 and (len(sys.argv) < 2 or sys.argv[1] not in COMMANDS):
        raise ConfigError("--workers above 1 runs from the llmos command line "
                          "(llmos serve or llmos control)")


class Siblings:
    def __init__(self, count: int) -> None:
        self.count = count
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _start(self, index: int) -> None:
        env = os.environ | {GATEWAY_PROCESS_ENV: str(index)}
        self._processes[index] = subprocess.Popen(
            [sys.executable, "-m", "llmos", *sys.argv[1:]], env=env)
        log.info("gateway process %d started (pid %d)", index,
                 self._processes[index].pid)

    async def run(self) -> None:
        """Start them, and start again one that exits, until ``stop``."""
        for index in range(1, self.count + 1):
            self._start(index)
        while not self._stopping:
            await asyncio.sleep(1.0)
            for index, process in list(self._processes.items()):
                # (0: it was stopped, as by a Ctrl-C that reached the whole group)
                if process.poll() not in (None, 0) and not self._stopping:
                    log.error("gateway process %d (pid %d) exited with %s; starting it "
                              "again", index, process.pid, process.returncode)
                    self._start(index)

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout_s
        for process in self._processes.values():
            while process.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values()]


async def leave_with_parent(on_orphaned: Callable[[], None]) -> None:
    """In an extra gateway process: call ``on_orphaned`` once the first process is gone
    (killed without stopping its siblings), so that none serves on without it."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.error("the first gateway process (pid %d) is gone; stopping", parent)
    on_orphaned()
