"""Replicas as ``llmos worker`` child processes (the runner of ``llmos agent``).

Each replica is one process, supervised:

- it dies with the agent: the kernel kills it when its parent goes (``PR_SET_PDEATHSIG``
  on Linux), so a ``kill -9`` of the agent leaves no orphan holding requests;
- it is ready once its first heartbeat arrives on the bus (its worker id is the
  replica id);
- one that exits is started again, after a backoff (1 s, doubling to 30 s; reset
  once it has run a minute); its restarts are reported;
- one whose heartbeats stop while its process lives (a stuck engine or event loop) is
  killed and started again;
- stopping one sends SIGTERM, on which the worker drains (no new requests, those in
  flight finish), then SIGKILL if it has not exited in time.

The order carries a registry reference and settings; the command line and its
environment are made here, from the agent's own settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from llmos.agent.cache import NodeCache
from llmos.agent.runner import DRAIN_S, Notify
from llmos.aio import stop_task
from llmos.bus import Bus, Subscription, TopicMessage, names
from llmos.bus.messages import (
    Heartbeat,
    ReplicaPhase,
    ReplicaSpec,
    ReplicaStatus,
    decode_or_ignore,
)
from llmos.errors import LLMOSError
from llmos.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 30.0)
STEADY_S = 60.0
"""A worker that ran this long starts its backoff over."""
STALE_AFTER = 3
"""Missed worker heartbeats after which a live process is replaced."""


def _die_with_parent() -> None:  # runs in the child, before exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    spec: ReplicaSpec
    state: ReplicaPhase = "starting"
    message: str | None = None
    restarts: int = 0
    unhealthy: int = 0
    """Times its worker stopped answering and was replaced."""
    replacing: bool = False
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    last_beat: float | None = None
    stopping: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ProcessRunner:
    def __init__(self, bus: Bus, settings: Settings, *, cache: NodeCache | None = None,
                 drain_s: float = DRAIN_S,
                 worker_interval_s: float = names.HEARTBEAT_INTERVAL_S) -> None:
        self.bus = bus
        self.settings = settings
        self.cache = cache
        self.drain_s = drain_s
        self.worker_interval_s = worker_interval_s
        self.on_change: Notify | None = None
        self._procs: dict[str, _Proc] = {}
        self._subscription: Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._cached: tuple[float, list[str]] = (0.0, [])
        self.logs = settings.home / "logs" / "workers"

    async def open(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._subscription = await self.bus.subscribe(names.HEARTBEAT_TOPIC, self._on_beat)
        self._watchdog = asyncio.create_task(self._watch(), name="worker-watchdog")

    async def start(self, spec: ReplicaSpec) -> None:
        proc = _Proc(spec)
        self._procs[spec.replica_id] = proc
        proc.task = asyncio.create_task(self._supervise(proc),
                                        name=f"replica-{spec.replica_id}")

    def _command(self, spec: ReplicaSpec, model: str) -> tuple[list[str], dict[str, str]]:
        engine = self.settings.engine.overlay(spec.settings)
        command = [sys.executable, "-m", "llmos", "worker", "--bus", self.settings.bus_url,
                   "--model", model, "--project", spec.project,
                   "--deployment", spec.deployment, "--worker-id", spec.replica_id,
                   "--home", str(self.settings.home)]
        if self.settings.storage_url:
            command += ["--storage", self.settings.storage_url]
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("LLMOS_ENGINE")]:
            del env[key]
        env["LLMOS_ENGINE"] = json.dumps(engine.model_dump(mode="json"))
        env.pop("LLMOS_JOIN_TOKEN", None)  # (the agent joined: its replicas are its own)
        return command, env

    async def _supervise(self, proc: _Proc) -> None:
        spec = proc.spec
        backoff = BACKOFF_S[0]
        log_path = self.logs / f"{spec.replica_id}.log"
        model = await self._pull(proc)
        while not proc.stopping:
            command, env = self._command(spec, model)
            proc.state, proc.last_beat, proc.started_at = "starting", None, time.monotonic()
            with log_path.open("ab") as out:
                proc.process = await asyncio.create_subprocess_exec(
                    *command, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
            log.info("replica %s: worker pid %d started", spec.replica_id, proc.process.pid)
            code = await proc.process.wait()
            if proc.stopping:
                break
            ran = time.monotonic() - proc.started_at
            if ran >= STEADY_S:
                backoff = BACKOFF_S[0]
            proc.restarts += 1
            if proc.replacing:
                proc.replacing = False
                proc.message = "its worker stopped answering; replaced"
            else:
                proc.message = f"worker exited with {code}: {_last_line(log_path)}"
            proc.state = "failed" if proc.last_beat is None else "starting"
            log.warning("replica %s: %s; starting it again in %.0f s", spec.replica_id,
                        proc.message, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_S[1])

    async def _pull(self, proc: _Proc) -> str:
        """The node's reference to the version, pulled into its cache first if need be
        (retried with backoff while the control plane cannot give it)."""
        if self.cache is None:
            return proc.spec.model
        backoff = BACKOFF_S[0]
        while True:
            proc.state = "pulling"
            self._notify()
            try:
                model = await asyncio.to_thread(self.cache.resolve, proc.spec.model,
                                                proc.spec.project)
                self._cached = (0.0, [])  # list the cache again at the next heartbeat
                return model
            except LLMOSError as exc:
                proc.state, proc.message = "failed", f"cannot pull {proc.spec.model}: " \
                    f"{exc.message}"
                log.warning("replica %s: %s", proc.spec.replica_id, proc.message)
                self._notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_S[1])

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _on_beat(self, message: TopicMessage) -> None:
        beat = decode_or_ignore(Heartbeat, message.body)
        if beat is None:
            return
        proc = self._procs.get(beat.worker_id)
        if proc is None or proc.stopping:
            return
        proc.last_beat = time.monotonic()
        if proc.state != "ready":
            proc.state, proc.message = "ready", None
            self._notify()

    async def _watch(self) -> None:
        """Replace a worker whose process lives but whose heartbeats stopped."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for proc in list(self._procs.values()):
                process = proc.process
                if (proc.stopping or proc.replacing or proc.last_beat is None
                        or process is None or process.returncode is not None):
                    continue
                if now - proc.last_beat > STALE_AFTER * self.worker_interval_s:
                    log.warning("replica %s: no heartbeat for %.0f s; replacing its worker",
                                proc.spec.replica_id, now - proc.last_beat)
                    proc.unhealthy += 1
                    proc.replacing = True
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    self._notify()

    async def stop(self, replica_id: str) -> None:
        proc = self._procs.get(replica_id)
        if proc is None:
            return
        proc.stopping, proc.state = True, "stopping"
        process = proc.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the worker drains, then exits
            try:
                await asyncio.wait_for(process.wait(), self.drain_s + 15)
            except TimeoutError:
                log.warning("replica %s: worker did not exit after draining; killing it",
                            replica_id)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if proc.task is not None:
            await stop_task(proc.task)
        self._procs.pop(replica_id, None)
        log.info("replica %s stopped", replica_id)

    def running(self) -> set[str]:
        return {rid for rid, p in self._procs.items() if not p.stopping}

    def statuses(self) -> list[ReplicaStatus]:
        out = []
        for rid, p in self._procs.items():
            rss = 0
            if p.process is not None and p.process.returncode is None:
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(p.process.pid).memory_info().rss
            out.append(ReplicaStatus(replica_id=rid, deployment=p.spec.deployment,
                                     generation=p.spec.generation, state=p.state, rss=rss,
                                     restarts=p.restarts, unhealthy=p.unhealthy,
                                     message=p.message))
        return out

    def cached(self) -> list[str]:
        """Versions in this node's registry (re-read every 30 s)."""
        at, versions = self._cached
        if time.monotonic() - at > 30:
            versions = _local_versions(self.settings)
            self._cached = (time.monotonic(), versions)
        if self.cache is not None:  # as the control plane names them
            return sorted(set(versions) | set(self.cache.resolved))
        return versions

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(rid) for rid in list(self._procs)))
        if self._watchdog is not None:
            await stop_task(self._watchdog)
        if self._subscription is not None:
            await self._subscription.cancel()


def _local_versions(settings: Settings) -> list[str]:
    from llmos.registry.local import LocalRegistry

    if not settings.models_dir.exists():
        return []
    try:
        return [v.ref for v in LocalRegistry(settings.models_dir).catalog.list()]
    except Exception as exc:  # a cache we cannot read counts as empty
        log.debug("cannot list the node's registry: %s", exc)
        return []


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 2000))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][-300:] if lines else "(no output)"
