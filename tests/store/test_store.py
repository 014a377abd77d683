"""The same store tests on SQLite (embedded) and PostgreSQL (a cluster)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from llmos.store import Store
from llmos.store.tables import Event, Replica
from tests.postgres import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'llmos.db'}"
    else:
        with postgres_database() as database:
            yield database


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    s.migrate()
    yield s
    s.close()


def test_migrations_are_idempotent_and_deployments_persist(url: str) -> None:
    store = Store(url)
    store.migrate()
    store.migrate()
    tables = set(inspect(store.engine).get_table_names())
    assert {"deployments", "nodes", "replicas", "events", "leases", "alembic_version"} <= tables
    store.upsert_deployment("gemma", "gemma-3-270m", engine_settings={"slots": 4})
    store.upsert_deployment("gemma", "gemma-3-270m:prod", engine_settings={"slots": 2})
    store.close()

    reopened = Store(url)
    rows = reopened.list_deployments()
    assert [(d.name, d.model_ref, d.project, d.engine_settings) for d in rows] == [
        ("gemma", "gemma-3-270m:prod", "default", {"slots": 2})]
    assert rows[0].strategy == "spread" and rows[0].generation == 1
    assert reopened.get_deployment("gemma", project="other") is None
    reopened.close()


def test_deployments_update_and_delete(store: Store) -> None:
    store.upsert_deployment("chat", "gemma")
    changed = store.update_deployment("chat", replicas=3, node_selector={"zone": "a"},
                                      generation=2, message="0/3 nodes fit")
    assert changed is not None and changed.replicas == 3
    row = store.get_deployment("chat")
    assert row is not None and row.node_selector == {"zone": "a"} and row.generation == 2
    assert store.update_deployment("nope", replicas=1) is None
    assert store.delete_deployment("chat") and not store.delete_deployment("chat")


def test_nodes_replicas_and_events(store: Store) -> None:
    store.nodes.seen("n1", labels={"zone": "a"}, capacity={"cpu": 1}, epoch="e1", at=10.0)
    store.nodes.seen("n1", labels={"zone": "b"}, capacity={"cpu": 2}, epoch="e2", at=12.0)
    store.nodes.update("n1", cordoned=True)
    (node,) = store.nodes.list()
    assert (node.labels, node.epoch, node.last_seen, node.cordoned) == ({"zone": "b"}, "e2",
                                                                        12.0, True)
    store.replicas.add(Replica(id="chat-1", deployment="chat", node="n1", generation=1,
                               model_version="gemma@1", engine_settings={}, reserved={},
                               state="scheduled", rss=0, restarts=0))
    for i, (deployment, state) in enumerate([("chat", "pulling"), ("chat", "starting"),
                                             ("other", "ready")]):
        store.replicas.add(Replica(id=f"r{i}", deployment=deployment, node="n2",
                                   generation=1, model_version="gemma@1",
                                   engine_settings={}, reserved={}, state=state, rss=0,
                                   restarts=0))
    assert store.replicas.deployments_in(["scheduled", "pulling"]) == {("default", "chat")}
    assert [r.id for r in store.replicas.list(deployment="chat", node="n2")] == ["r0", "r1"]
    store.replicas.remove(["r0", "r1", "r2"])
    store.replicas.update("chat-1", state="ready", rss=123)
    (replica,) = store.replicas.list(node="n1")
    assert (replica.state, replica.rss) == ("ready", 123)
    assert store.replicas.deployments_in(["scheduled", "pulling"]) == set()
    store.replicas.remove(["chat-1"])
    assert store.replicas.list() == []
    store.events.add(Event(at=float(i), kind="scheduled", project="default",
                           deployment="chat" if i % 2 else "other", message=f"e{i}")
                     for i in range(6))
    assert [e.message for e in store.events.list(deployment="chat", limit=2)] == ["e3", "e5"]
    assert len(store.events.list()) == 6


def test_one_lease_holder_at_a_time_and_a_new_term_for_each(store: Store) -> None:
    leases = store.leases
    assert leases.acquire("controller", "a", ttl_s=10, now=100) == 1
    assert leases.acquire("controller", "b", ttl_s=10, now=105) is None
    assert leases.acquire("controller", "a", ttl_s=10, now=108) == 1  # renewed
    assert leases.acquire("controller", "b", ttl_s=10, now=119) == 2  # a's ran out
    leases.release("controller", "b")
    assert leases.acquire("controller", "a", ttl_s=10, now=120) == 3


def test_racing_for_a_lease_gives_it_to_one(store: Store) -> None:
    won: list[str] = []
    barrier = threading.Barrier(4)

    def contend(holder: str) -> None:
        barrier.wait()
        if store.leases.acquire("race", holder, ttl_s=30, now=1000) is not None:
            won.append(holder)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_the_cluster_id_is_made_once_and_shared_by_every_store_on_the_database(
        store: Store, url: str) -> None:
    first = store.facts.cluster_id()
    assert len(first) == 12 and store.facts.cluster_id() == first
    other = Store(url)
    try:
        assert other.facts.cluster_id() == first  # (a second control plane on it)
    finally:
        other.close()
