"""Live autoscaling benchmark: how fast the controller reacts to a load step, and how
long a request to a deployment at zero waits beyond the cold start it sets off.

``llmos serve`` on this machine (SQLite, the in-process bus, the embedded node, replicas
loading the default Gemma 3 270M with 2 slots, 512 context, 1 thread) or, with
``--cluster``, the healing benchmark's cluster (RabbitMQ, PostgreSQL, ``llmos control``
and three ``llmos agent`` of 1 CPU, each replica an ``llmos worker`` process). Each
round:

- **step**: a deployment autoscaled 1..2 (a request starts within 0.5 s for 90 %), one
  client asking 12-token completions one after another for 6 s, then eight. Measured:
  seconds from the step to the scale-up decision (its event), and to the new replica
  ready. The issue's bar: the decision within 2 s.
- **from zero**: a deployment autoscaled 0..1, idle 5 s: it goes to zero; then one
  streamed request. Measured: its time to first token, against the cold start the
  autoscaler measured for that deployment (placement to ready). The issue's bar: the
  first token within the cold start + 1 s.

    .venv/bin/python benchmarks/autoscale_live.py [--rounds 3] [--cluster] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server, stop_server  # noqa: E402

SMALL = {"slots": 2, "ctx_size": 512, "threads": 1, "cache_ram_mib": 0}


class Target:
    """Where the API is."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.api = f"{url}/v1"


def until(check: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval_s)
    raise SystemExit(f"timed out waiting for {what}")


def call(server: Target, method: str, path: str, **kw: Any) -> Any:
    response = httpx.request(method, f"{server.url}{path}", timeout=30, **kw)
    if response.status_code >= 400:
        raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def show(server: Target, name: str) -> dict[str, Any]:
    body: dict[str, Any] = call(server, "GET", f"/api/deployments/{name}",
                                params={"events": 200})
    return body


def ask(server: Target, model: str) -> float:
    """One streamed 12-token completion: seconds to its first token."""
    started = time.monotonic()
    with OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=120) as client:
        first = None
        for chunk in client.completions.create(model=model, prompt="Count: one, two,",
                                               max_tokens=12, temperature=0, stream=True):
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.monotonic() - started
    assert first is not None
    return first


def clients(server: Target, model: str, count: int, stop: threading.Event
            ) -> list[threading.Thread]:
    def run() -> None:
        while not stop.is_set():
            ask(server, model)
    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def room(server: Target) -> float:
    node = call(server, "GET", "/api/nodes")["data"][0]
    taken = sum(r["reserved"]["cpu"] for d in call(server, "GET", "/api/deployments")["data"]
                for r in show(server, d["name"])["placed"])
    return float(node["capacity"]["cpu"] - taken)


def ready(server: Target, name: str, count: int) -> None:
    until(lambda: sum(r["state"] == "ready" for r in show(server, name)["placed"])
          == count == len(show(server, name)["placed"]), 120, f"{count} ready of {name}")


def resources(cpu: float | None) -> dict[str, Any]:
    return {} if cpu is None else {"resources": {"cpu": cpu}}


def step_round(server: Target, name: str, cpu: float | None) -> dict[str, float]:
    call(server, "POST", "/api/deployments", json={
        "name": name, "model": "gemma-3-270m", "settings": SMALL, **resources(cpu),
        "autoscale": {"min": 1, "max": 2, "wait_s": 0.5, "percentile": 0.9,
                      "idle_s": 3600}})
    ready(server, name, 1)
    stop = threading.Event()
    threads = clients(server, name, 1, stop)
    time.sleep(6)
    step = time.time()
    threads += clients(server, name, 7, stop)
    event = until(lambda: [e for e in show(server, name)["events"]
                           if e["kind"] == "autoscaled"], 60, "a scale-up", 0.05)[0]

    def new_ready() -> float | None:
        found = [e for e in show(server, name)["events"] if e["kind"] == "ready"
                 and e["at"] > step]
        return found[0]["at"] if found else None
    ready_at = until(new_ready, 120, "the new replica ready", 0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    call(server, "DELETE", f"/api/deployments/{name}")
    until(lambda: not any(d["name"] == name
                          for d in call(server, "GET", "/api/deployments")["data"]), 60,
          "deleted")
    return {"decision_s": event["at"] - step, "ready_s": ready_at - step}


def zero_round(server: Target, name: str, cpu: float | None) -> dict[str, float]:
    call(server, "POST", "/api/deployments", json={
        "name": name, "model": "gemma-3-270m", "settings": SMALL, **resources(cpu),
        "autoscale": {"min": 0, "max": 1, "idle_s": 5}})
    ready(server, name, 1)
    ask(server, name)
    until(lambda: not show(server, name)["placed"] and show(server, name)["replicas"] == 0,
          90, "scaled to zero", 0.25)
    time.sleep(1)
    first_token = ask(server, name)
    look = show(server, name)["autoscaler"]
    cold = float(look["cold_start_s"])
    call(server, "DELETE", f"/api/deployments/{name}")
    return {"first_token_s": first_token, "cold_start_s": cold,
            "beyond_cold_start_s": first_token - cold}


Rounds = tuple[list[dict[str, float]], list[dict[str, float]]]


def rounds(target: Target, count: int, cpu: float | None) -> Rounds:
    steps = [step_round(target, f"step-{i}", cpu) for i in range(count)]
    zeros = [zero_round(target, f"zero-{i}", cpu) for i in range(count)]
    return steps, zeros


def on_server(count: int) -> Rounds:
    with tempfile.TemporaryDirectory(prefix="llmos-autoscale-") as home:
        server = start_server(Path(home), extra_env={
            "LLMOS_ENGINE__SLOTS": "2", "LLMOS_ENGINE__CTX_SIZE": "512",
            "LLMOS_ENGINE__THREADS": "1"})
        try:
            target = Target(server.url)
            return rounds(target, count, round(room(target) / 2, 3))
        finally:
            stop_server(server)


def on_cluster(count: int) -> Rounds:
    import shutil
    import subprocess
    import uuid

    import psycopg
    from benchmarks.healing import PG_ADMIN, Cluster, rabbitmqctl

    tag = uuid.uuid4().hex[:8]
    vhost, database = f"llmos-bench-{tag}", f"llmos_bench_{tag}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    root = Path(tempfile.mkdtemp(prefix="llmos-autoscale-"))
    cluster = Cluster(root, f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                      f"postgresql://postgres@127.0.0.1:5432/{database}")
    try:
        cluster.start()
        return rounds(Target(cluster.url), count, None)
    finally:
        cluster.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True,
                       timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cluster", action="store_true",
                        help="RabbitMQ, PostgreSQL, llmos control and three llmos agent")
    args = parser.parse_args()
    runner = on_cluster if args.cluster else on_server
    steps, zeros = runner(args.rounds)
    m = {key: statistics.median(r[key] for r in rows)
         for rows in (steps, zeros) for key in rows[0]}
    result = {"steps": steps, "zeros": zeros, "median": m}
    for i, r in enumerate(steps):
        print(f"step {i}: decision {r['decision_s']:.2f} s, new replica ready "
              f"{r['ready_s']:.2f} s after the step")
    for i, r in enumerate(zeros):
        print(f"zero {i}: first token {r['first_token_s']:.2f} s, cold start "
              f"{r['cold_start_s']:.2f} s: {r['beyond_cold_start_s']:+.2f} s beyond it")
    print(f"median: decision {m['decision_s']:.2f} s (bar 2 s); first token from zero "
          f"{m['beyond_cold_start_s']:+.2f} s beyond the cold start (bar +1 s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
