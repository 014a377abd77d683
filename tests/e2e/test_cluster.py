"""A cluster of real processes on this machine: RabbitMQ and PostgreSQL, two
``llmos control`` and three ``llmos agent`` (1 CPU, 3 GiB each), workers with one
thread and ``poll`` 0 on these two cores."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, require_service, stop_process
from tests.e2e import load
from tests.postgres import postgres_database
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
SMALL = {"slots": 2, "ctx_size": 512, "threads": 1, "cache_ram_mib": 0, "poll": 0}
NODES = ("node-a", "node-b", "node-c")
ENV = {"LLMOS_ENGINE__THREADS": "1", "LLMOS_ENGINE__POLL": "0",
       "LLMOS_LOG_LEVEL": "INFO"}


@dataclass
class Cluster:
    root: Path
    db: str
    bus: str
    controls: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:4]}")

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        with (home / "out.log").open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", "llmos", *args, "--home", str(home)],
                                    env=os.environ | ENV, stdout=out,
                                    stderr=subprocess.STDOUT)

    def start_control(self, name: str) -> str:
        port = free_port()
        self.controls[f"http://127.0.0.1:{port}"] = self.spawn(
            name, ["control", "--bus", self.bus, "--db", self.db, "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ok(f"{url}/healthz"), 120, what=f"{name} answering")
        return url

    def start_agent(self, node: str) -> None:
        self.agents[node] = self.spawn(node, [
            "agent", "--bus", self.bus, "--name", node, "--cpus", "1", "--memory", "3GiB",
            "--control", next(iter(self.controls)),
            "--labels", f"zone={'a' if node == 'node-a' else 'b'}"])

    def name(self, base: str) -> str:
        return f"{self.prefix}-{base}"

    def log(self, name: str) -> str:
        return (self.root / name / "out.log").read_text(errors="replace")


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A virtual host of its own, so that no other test's nodes share the cluster's
    topics (falls back to / where rabbitmqctl cannot be run)."""
    ctl = shutil.which("rabbitmqctl")
    vhost = f"llmos-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> bool:
        return ctl is not None and subprocess.run(
            [ctl, *args], capture_output=True, timeout=60).returncode == 0

    if not (run("add_vhost", vhost) and run("set_permissions", "-p", vhost, "guest",
                                             ".*", ".*", ".*")):
        yield AMQP
        return
    try:
        yield f"{AMQP}{vhost}"
    finally:
        run("delete_vhost", vhost)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    with postgres_database() as db, rabbitmq_vhost() as bus:
        c = Cluster(tmp_path_factory.mktemp("cluster"), db, bus)
        try:
            c.start_control("control-1")
            c.start_control("control-2")
            for node in NODES:
                c.start_agent(node)
            url = next(iter(c.controls))
            wait_until(lambda: len([n for n in api(url, "GET", "/api/nodes").json()["data"]
                                    if n["state"] == "ready"]) == 3, 60,
                       what="three nodes ready")
            yield c
        finally:
            for process in [*c.agents.values(), *c.controls.values()]:
                stop_process(process, timeout=40)


def api(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", timeout=30, **kw)


def control(cluster: Cluster) -> str:
    """A control plane that is up (either: they serve the same API)."""
    return next(url for url, p in cluster.controls.items() if p.poll() is None)


def placed(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    response = api(control(cluster), "GET", f"/api/deployments/{name}")
    assert response.status_code == 200, response.text
    replicas: list[dict[str, Any]] = response.json()["placed"]
    return replicas


def wait_ready(cluster: Cluster, name: str, count: int, timeout_s: float = 180,
               generation: int | None = None) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        replicas = placed(cluster, name)
        good = [r for r in replicas if r["state"] == "ready"
                and (generation is None or r["generation"] == generation)]
        return good if len(good) == count == len(replicas) else None
    result = wait_until(check, timeout_s, 0.25, what=f"{count} ready replicas of {name}")
    assert isinstance(result, list)
    return result


def ask(url: str, model: str) -> str:
    return load.ask(f"{url}/v1", model)


def test_spread_places_one_replica_per_node(cluster: Cluster) -> None:
    name = cluster.name("chat")
    made = api(control(cluster), "POST", "/api/deployments", json={
        "name": name, "model": "gemma-3-270m", "replicas": 3, "settings": SMALL})
    assert made.status_code == 201, made.text
    replicas = wait_ready(cluster, name, 3)
    assert sorted(r["node"] for r in replicas) == list(NODES)
    # a second deployment of the same model with other settings, by another control plane
    other = cluster.name("tiny")
    urls = list(cluster.controls)
    assert api(urls[1], "POST", "/api/deployments", json={
        "name": other, "model": "gemma-3-270m", "replicas": 1,
        "settings": {**SMALL, "slots": 1}, "node_selector": {"zone": "b"}}).status_code == 201
    (tiny,) = wait_ready(cluster, other, 1)
    assert tiny["node"] in ("node-b", "node-c")
    assert ask(urls[0], name) and ask(urls[1], other)


def test_a_node_pulls_a_version_it_lacks_from_the_control_plane(cluster: Cluster) -> None:
    url = next(iter(cluster.controls))  # the agents' --control
    base = api(url, "GET", "/api/models/gemma-3-270m@1").json()
    made = api(url, "POST", "/api/models/gemma-next/versions", json={
        "files": [{"filename": b["filename"], "digest": b["digest"]} for b in base["blobs"]]})
    assert made.status_code == 201, made.text
    name = cluster.name("next")
    assert api(url, "POST", "/api/deployments", json={
        "name": name, "model": "gemma-next", "replicas": 1, "settings": SMALL,
        "node_selector": {"zone": "a"}}).status_code == 201
    (replica,) = wait_ready(cluster, name, 1)
    assert replica["node"] == "node-a"
    # the node made the version from blobs it already held: nothing downloaded
    log = cluster.log("node-a")
    assert "version gemma-next@1 is here as gemma-next@1 (0 MiB pulled)" in log
    assert ask(url, name)
    nodes = {n["name"]: n for n in api(url, "GET", "/api/nodes").json()["data"]}
    assert nodes["node-a"]["state"] == "ready"
    api(url, "DELETE", f"/api/deployments/{name}")


def test_a_deployment_that_cannot_fit_reads_its_reasons(cluster: Cluster) -> None:
    name = cluster.name("huge")
    assert api(control(cluster), "POST", "/api/deployments", json={
        "name": name, "model": "gemma-3-270m", "settings": SMALL,
        "resources": {"memory": 5 * 2**30}}).status_code == 201
    message = wait_until(lambda: api(control(cluster), "GET", f"/api/deployments/{name}")
                         .json()["message"], 30, what="a reason")
    assert "0/3 nodes fit: 3 insufficient memory" in str(message)
    assert "needs 5.0 GiB memory" in str(message)
    api(control(cluster), "DELETE", f"/api/deployments/{name}")


def test_kill_9_of_an_agent_under_load_loses_no_request(cluster: Cluster) -> None:
    name = cluster.name("chat")
    before = wait_ready(cluster, name, 3)
    victim = "node-a"
    url = control(cluster)
    import psutil

    workers = psutil.Process(cluster.agents[victim].pid).children()
    assert workers  # its replica's worker process
    killed_at: list[float] = []

    def one(i: int) -> str:
        if i == 30:
            cluster.agents[victim].send_signal(signal.SIGKILL)
            killed_at.append(time.monotonic())
        return ask(url, name)

    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(one, range(100)))
    assert len(answers) == 100 and all(isinstance(a, str) for a in answers)
    # its workers died with it (the kernel's parent-death signal)
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                               for p in workers), 10, what="the agent's workers gone")
    # its replica runs elsewhere (once the node is found dead: its heartbeats stop)
    def moved() -> list[dict[str, Any]] | None:
        replicas = placed(cluster, name)
        ready = [r for r in replicas if r["state"] == "ready"]
        nodes = {r["node"] for r in ready}
        return ready if len(ready) == 3 == len(replicas) and victim not in nodes else None

    after = wait_until(moved, 60, 0.25, what=f"the replica of {victim} running elsewhere")
    assert isinstance(after, list)
    assert {r["id"] for r in before} - {r["id"] for r in after}
    healed_in = time.monotonic() - killed_at[0]
    print(f"healed {healed_in:.1f} s after kill -9")
    events = api(url, "GET", "/api/events", params={"deployment": name}).json()["data"]
    assert any(e["kind"] == "lost" for e in events)
    assert any(e["kind"] == "rescheduled" for e in events)
    # the node comes back: it is told to run nothing it ran before
    cluster.agents[victim].wait(10)
    cluster.start_agent(victim)
    wait_until(lambda: next(n for n in api(url, "GET", "/api/nodes").json()["data"]
                            if n["name"] == victim)["state"] == "ready", 60,
               what="node-a back")


def test_rebalance_moves_a_replica_to_the_node_that_came_back(cluster: Cluster) -> None:
    name = cluster.name("chat")
    url = control(cluster)
    before = wait_ready(cluster, name, 3)
    assert "node-a" not in {r["node"] for r in before}  # nothing moves by itself
    done = api(url, "POST", "/api/rebalance", params={"deployment": name})
    assert done.status_code == 202 and done.json()["deployments"] == [name]

    def spread_again() -> list[dict[str, Any]] | None:
        rs = placed(cluster, name)
        nodes = sorted(r["node"] for r in rs)
        ok = nodes == list(NODES) and all(r["state"] == "ready" for r in rs)
        return rs if ok else None

    wait_until(spread_again, 120, 0.5, what="one replica per node again")
    kinds = [e["kind"] for e in api(url, "GET", "/api/events",
                                    params={"deployment": name}).json()["data"]]
    assert "rebalancing" in kinds
    wait_until(lambda: "rebalanced" in [e["kind"] for e in api(
        url, "GET", "/api/events", params={"deployment": name}).json()["data"]], 30,
        what="the rebalance to end")


def test_a_crashed_worker_is_restarted(cluster: Cluster) -> None:
    import psutil

    name = cluster.name("chat")
    replica = wait_ready(cluster, name, 3)[0]
    agent = psutil.Process(cluster.agents[replica["node"]].pid)
    (worker,) = [p for p in agent.children() if replica["id"] in " ".join(p.cmdline())]
    worker.kill()
    url = control(cluster)

    def restarted() -> bool:
        rs = {r["id"]: r for r in placed(cluster, name)}
        r = rs.get(replica["id"])
        return bool(r and r["restarts"] >= 1 and r["state"] == "ready")

    wait_until(restarted, 60, 0.5, what="the worker restarted, ready")
    events = api(url, "GET", "/api/events", params={"deployment": name}).json()["data"]
    assert any(e["kind"] == "restarted" and e["replica"] == replica["id"] for e in events)


def test_a_stuck_worker_is_replaced(cluster: Cluster) -> None:
    """A worker whose process lives but stops answering (SIGSTOP: no heartbeats) is
    killed and started again by its agent, and the controller records it unhealthy."""
    import psutil

    name = cluster.name("chat")
    replica = wait_ready(cluster, name, 3)[-1]
    agent = psutil.Process(cluster.agents[replica["node"]].pid)
    (worker,) = [p for p in agent.children() if replica["id"] in " ".join(p.cmdline())]
    restarts = replica["restarts"]
    worker.suspend()
    try:
        url = control(cluster)

        def replaced() -> bool:
            rs = {r["id"]: r for r in placed(cluster, name)}
            r = rs.get(replica["id"])
            return bool(r and r["restarts"] > restarts and r["state"] == "ready")

        # three missed heartbeats (5 s apart), then a restart and a model load
        wait_until(replaced, 90, 0.5, what="the stuck worker replaced, ready")
        assert not worker.is_running()
        events = api(url, "GET", "/api/events", params={"deployment": name}).json()["data"]
        unhealthy = [e for e in events if e["kind"] == "unhealthy"
                     and e["replica"] == replica["id"]]
        assert unhealthy, [e["kind"] for e in events]
        assert "stopped answering" in unhealthy[0]["message"]
    finally:
        with contextlib.suppress(psutil.Error):
            worker.kill()


def test_settings_a_version_and_a_resize_roll_under_load_failing_no_request(
        cluster: Cluster) -> None:
    name = cluster.name("chat")
    wait_ready(cluster, name, 3)
    url = control(cluster)
    with load.steady_load(f"{url}/v1", name, clients=4) as traffic:
        changed = api(url, "PATCH", f"/api/deployments/{name}",
                      json={"settings": {**SMALL, "slots": 3}})
        assert changed.status_code == 200 and changed.json()["generation"] == 2
        wait_ready(cluster, name, 3, timeout_s=240, generation=2)
        # a new version (made on this control plane by the pull test) and a vertical
        # resize at once: one more generation, rolled the same way
        moved = api(url, "PATCH", f"/api/deployments/{name}", json={
            "model": "gemma-next", "resources": {"cpu": 0.3, "memory": 900 * 2**20}})
        assert moved.status_code == 200, moved.text
        assert moved.json()["generation"] == 3
        assert moved.json()["model_version"] == "gemma-next@1"
        rolled = wait_ready(cluster, name, 3, timeout_s=240, generation=3)
        assert {r["model_version"] for r in rolled} == {"gemma-next@1"}
        assert all(r["reserved"]["memory"] >= 900 * 2**20 for r in rolled)
    assert traffic.failures == [] and traffic.answered > 0


def test_drain_and_cordon_move_replicas_off_a_node(cluster: Cluster) -> None:
    name = cluster.name("chat")
    url = control(cluster)
    replicas = wait_ready(cluster, name, 3)
    node = replicas[0]["node"]
    assert api(url, "POST", f"/api/nodes/{node}/drain").status_code == 200
    try:
        after = wait_until(lambda: (lambda rs: rs if len(rs) == 3 and node not in
                                    {r["node"] for r in rs} else None)(
            wait_ready(cluster, name, 3)), 180, 1.0, what=f"replicas off {node}")
        assert after
    finally:
        assert api(url, "POST", f"/api/nodes/{node}/uncordon").status_code == 200


def test_the_active_controller_dies_and_another_takes_over(cluster: Cluster) -> None:
    import psycopg

    name = cluster.name("chat")
    with psycopg.connect(cluster.db) as db:
        holder, term = db.execute(
            "select holder, term from leases where name = 'controller'").fetchone()
    # the holder names its process ("controller HOST pid PID ..."): kill that one
    pid = int(holder.split(" pid ")[1].split()[0])
    active = next(url for url, p in cluster.controls.items() if p.pid == pid)
    cluster.controls[active].send_signal(signal.SIGKILL)
    cluster.controls[active].wait(10)
    killed = time.monotonic()

    def new_term() -> Any:
        with psycopg.connect(cluster.db) as db:
            row = db.execute("select holder, term from leases where name = 'controller'"
                             ).fetchone()
        return row if row and row[1] > term else None

    holder2, _ = wait_until(new_term, 30, 0.2, what="another controller")  # type: ignore[misc]
    took_over = time.monotonic() - killed
    assert holder2 != holder and took_over <= 10, took_over
    # and it acts: a scale-down through the surviving control plane is carried out
    url = control(cluster)
    assert api(url, "PATCH", f"/api/deployments/{name}", json={"replicas": 2}
               ).status_code == 200
    running = {r["id"] for r in wait_ready(cluster, name, 2, timeout_s=60)}
    assert ask(url, name)

    # a control plane started afresh, then the last one killed: the new controller
    # learns the cluster from heartbeats before it acts, and moves nothing
    fresh = cluster.start_control("control-3")
    survivor = next(u for u, p in cluster.controls.items() if p.poll() is None and u != fresh)
    cluster.controls[survivor].send_signal(signal.SIGKILL)
    cluster.controls[survivor].wait(10)
    wait_until(lambda: (new_term() or (None, 0))[1] > term + 1, 30, 0.2,
               what="the fresh controller active")
    watch_until = time.monotonic() + 4  # a few of its passes: nothing moves
    while time.monotonic() < watch_until:
        assert {r["id"] for r in placed(cluster, name)} == running
        time.sleep(0.5)
    assert ask(fresh, name)
