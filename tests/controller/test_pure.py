"""The controller's pure pieces: node liveness, rolling changes, the snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llmos.bus.messages import NodeStatus, ReplicaStatus
from llmos.controller.nodes import NodeDirectory
from llmos.controller.snapshot import rollout, snapshot
from llmos.scheduler.model import GiB, Resources
from llmos.store.tables import Deployment, Node, Replica

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def status(node: str, sent_at: float, epoch: str = "e1",
           replicas: list[ReplicaStatus] | None = None) -> NodeStatus:
    return NodeStatus(node=node, epoch=epoch, cpus=1, memory=3 * GiB, sent_at=sent_at,
                      interval_s=2.0, replicas=replicas or [])


def test_a_node_is_lost_after_three_missed_heartbeats_and_news_wakes_the_controller() -> None:
    nodes = NodeDirectory()
    assert nodes.observe(status("a", 100.0), now=100.0)  # new
    assert not nodes.observe(status("a", 102.0), now=102.0)  # nothing new
    assert not nodes.observe(status("a", 101.0), now=102.5)  # late and older: ignored
    ready = ReplicaStatus(replica_id="r1", deployment="d", generation=1, state="ready")
    assert nodes.observe(status("a", 104.0, replicas=[ready]), now=104.0)  # a state changed
    assert nodes.alive("a", now=110.0) and not nodes.alive("a", now=110.1)
    assert nodes.observe(status("a", 200.0, epoch="e2"), now=200.0)  # restarted


def deployment(replicas: int = 2, generation: int = 2) -> Deployment:
    return Deployment(name="chat", project="default", model_ref="gemma",
                      model_version="gemma@1", replicas=replicas, generation=generation,
                      engine_settings={}, resources={}, node_selector={}, strategy="spread",
                      anti_affinity=False, priority=0, message=None)


def replica(rid: str, generation: int, state: str = "ready", node: str = "a",
            age: int = 0) -> Replica:
    return Replica(id=rid, project="default", deployment="chat", node=node,
                   generation=generation, model_version="gemma@1", engine_settings={},
                   reserved={"cpu": 0.25, "memory": GiB}, state=state, rss=0, restarts=0,
                   created_at=T0 + timedelta(seconds=age))


def test_a_rolling_change_goes_one_replica_at_a_time() -> None:
    d = deployment()
    # nothing new yet: place one new replica, retire nothing
    step = rollout(d, [replica("o1", 1), replica("o2", 1)])
    assert (step.max_new, step.retire, step.outdated) == (1, (), {"o1", "o2"})
    # the new one is starting: wait
    step = rollout(d, [replica("o1", 1), replica("o2", 1), replica("n1", 2, "starting")])
    assert (step.max_new, step.retire) == (0, ())
    # it is ready: retire the oldest old one, and go on
    step = rollout(d, [replica("o1", 1, age=1), replica("o2", 1, age=2), replica("n1", 2)])
    assert (step.max_new, step.retire) == (1, ("o1",))
    # an old one that is not ready goes first
    step = rollout(d, [replica("o1", 1), replica("o2", 1, "starting"), replica("n1", 2)])
    assert step.retire == ("o2",)
    # done
    assert rollout(d, [replica("n1", 2), replica("n2", 2)]).max_new is None


def test_a_replica_on_a_draining_node_is_replaced_like_an_old_one() -> None:
    d = deployment(generation=1)
    step = rollout(d, [replica("r1", 1, node="a"), replica("r2", 1, node="b")],
                   draining=frozenset({"a"}))
    assert (step.max_new, step.outdated) == (1, {"r1"})
    step = rollout(d, [replica("r1", 1, node="a"), replica("r2", 1, node="b"),
                       replica("r3", 1, node="c")], draining=frozenset({"a"}))
    assert step.retire == ("r1",)


def test_the_snapshot_holds_a_failed_replica_in_place_for_a_while() -> None:
    nodes = NodeDirectory()
    nodes.observe(status("a", 100.0), now=100.0)
    d = deployment(replicas=1, generation=1)
    failed = replica("r1", 1, state="failed")
    needs = {"chat": Resources(cpu=0.25, memory=GiB)}
    rows = [Node(name="a", labels={}, capacity={}, cordoned=True, state="ready", epoch="e1",
                 last_seen=100.0)]

    def shot(now: float) -> str:
        snap = snapshot([d], needs, rows, nodes, [failed], {"chat": rollout(d, [failed])},
                        now=now, failed_since={"r1": 100.0})
        (node,) = snap.nodes
        assert node.cordoned and node.ready == (now <= 106.0)
        return snap.replicas[0].state

    assert shot(105.0) == "starting"  # held
    assert shot(111.0) == "failed"  # replaced from now on
