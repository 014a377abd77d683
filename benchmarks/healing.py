"""Healing benchmark: from ``kill -9`` of a node's agent to its replicas answering elsewhere.

A real cluster on this machine: RabbitMQ (a virtual host of its own) and PostgreSQL
(a database of its own), one ``llmos control``, three ``llmos agent`` (1 CPU, 3 GiB
each; workers with one thread and poll 0). One deployment of the default Gemma with
3 replicas, ``spread``: one per node. Each round:

1. every replica ready, one answered request per second going on;
2. ``kill -9`` of the agent of a node that holds a replica (its worker dies with it);
3. measured: the time until the deployment again has 3 ready replicas, none on the
   killed node, and one of the new ones has answered a request (a request sent to the
   deployment after the new replica is ready, by its own queue; it is served by any
   replica, so readiness is what is timed, then confirmed by an answer);
4. the agent is started again (empty) and the cluster settles before the next round.

Reported: each round's time and the median (the issue's target: <= 15 s), with the
controller's node-loss timeout (3 heartbeats of 2 s) as the floor it cannot beat.

    .venv/bin/python benchmarks/healing.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SMALL = {"slots": 2, "ctx_size": 512, "threads": 1, "cache_ram_mib": 0, "poll": 0}
NODES = ("node-a", "node-b", "node-c")
ENV = {"LLMOS_ENGINE__THREADS": "1", "LLMOS_ENGINE__POLL": "0"}


def until(check: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval_s)
    raise SystemExit(f"timed out waiting for {what}")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


class Cluster:
    def __init__(self, root: Path, bus: str, db: str) -> None:
        self.root, self.bus, self.db = root, bus, db
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""

    def spawn(self, name: str, args: list[str]) -> None:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        with (home / "out.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "llmos", *args, "--home", str(home)],
                env=os.environ | ENV, stdout=out, stderr=subprocess.STDOUT)

    def start(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.spawn("control", ["control", "--bus", self.bus, "--db", self.db,
                               "--port", str(port)])
        until(lambda: self.ok("/healthz"), 120, "the control plane")
        for node in NODES:
            self.agent(node)
        until(lambda: len(self.ready_nodes()) == 3, 60, "three nodes")

    def agent(self, node: str) -> None:
        self.spawn(node, ["agent", "--bus", self.bus, "--name", node, "--cpus", "1",
                          "--memory", "3GiB"])

    def ok(self, path: str) -> bool:
        try:
            return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(method, f"{self.url}{path}", timeout=30, **kw)
        response.raise_for_status()
        return response.json() if response.content else None

    def ready_nodes(self) -> list[str]:
        return [n["name"] for n in self.api("GET", "/api/nodes")["data"]
                if n["state"] == "ready"]

    def replicas(self, name: str) -> list[dict[str, Any]]:
        placed: list[dict[str, Any]] = self.api("GET", f"/api/deployments/{name}")["placed"]
        return placed

    def ask(self, name: str) -> bool:
        try:
            response = httpx.post(f"{self.url}/v1/completions", timeout=60, json={
                "model": name, "prompt": "One, two,", "max_tokens": 2, "temperature": 0})
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import psycopg

    tag = uuid.uuid4().hex[:8]
    vhost, database = f"llmos-bench-{tag}", f"llmos_bench_{tag}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    root = Path(tempfile.mkdtemp(prefix="llmos-healing-"))
    cluster = Cluster(root, f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                      f"postgresql://postgres@127.0.0.1:5432/{database}")
    rounds: list[dict[str, Any]] = []
    try:
        cluster.start()
        name = "heal"
        cluster.api("POST", "/api/deployments", json={
            "name": name, "model": "gemma-3-270m", "replicas": 3, "settings": SMALL})

        def all_ready() -> list[dict[str, Any]] | None:
            rs = cluster.replicas(name)
            return rs if len(rs) == 3 and all(r["state"] == "ready" for r in rs) else None

        until(all_ready, 240, "three ready replicas")
        for i in range(args.rounds):
            before = until(all_ready, 240, "three ready replicas")
            victim = before[i % len(before)]["node"]
            lost = {r["id"] for r in before if r["node"] == victim}
            assert cluster.ask(name)
            start = time.monotonic()
            cluster.processes[victim].send_signal(signal.SIGKILL)
            cluster.processes[victim].wait(10)

            def healed(victim: str = victim) -> bool:
                rs = all_ready()
                return bool(rs) and victim not in {r["node"] for r in rs or []}

            until(healed, 120, "the replicas placed elsewhere, ready", 0.05)
            ready_s = time.monotonic() - start
            assert cluster.ask(name)
            answered_s = time.monotonic() - start
            rounds.append({"round": i + 1, "killed": victim, "replicas_lost": len(lost),
                           "ready_s": ready_s, "answered_s": answered_s})
            print(f"round {i + 1}: killed {victim} ({len(lost)} replica(s)); ready "
                  f"elsewhere after {ready_s:.1f} s, answered after {answered_s:.1f} s",
                  flush=True)
            cluster.agent(victim)
            until(lambda victim=victim: victim in cluster.ready_nodes(), 60, "the node back")
            time.sleep(3)
    finally:
        cluster.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True,
                       timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    times = [r["answered_s"] for r in rounds]
    print(f"\nmedian of {len(times)}: {statistics.median(times):.1f} s from kill -9 to "
          f"answering elsewhere (min {min(times):.1f}, max {max(times):.1f}); the node-loss "
          "timeout alone is 6 s (3 heartbeats of 2 s)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"healing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rounds": rounds, "median_s": statistics.median(times)},
                               indent=2))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
