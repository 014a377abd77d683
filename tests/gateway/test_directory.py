"""The worker directory: heartbeats in, the live set out (no bus needed)."""

from __future__ import annotations

from llmos.bus.messages import Heartbeat
from llmos.gateway.directory import WorkerDirectory


def beat(worker: str, sent_at: float, *, epoch: str = "e1", busy: int = 0,
         leaving: bool = False) -> Heartbeat:
    return Heartbeat(worker_id=worker, epoch=epoch, deployment="m", host="h", slots=4,
                     busy=busy, sent_at=sent_at, interval_s=5.0, leaving=leaving)


def test_a_worker_is_live_for_two_intervals_after_its_last_heartbeat() -> None:
    directory = WorkerDirectory()
    directory.observe(beat("w1", 100.0))
    directory.observe(beat("w2", 104.0))
    assert [h.worker_id for h in directory.live(109.0)] == ["w1", "w2"]
    assert [h.worker_id for h in directory.live(111.0)] == ["w2"]  # w1: 11 s > 2 x 5 s
    assert directory.get("w1", 111.0) is None
    assert directory.live(200.0) == []


def test_a_late_old_heartbeat_does_not_replace_a_newer_one() -> None:
    directory = WorkerDirectory()
    directory.observe(beat("w1", 100.0, busy=3))
    directory.observe(beat("w1", 95.0, busy=1))
    heartbeat = directory.get("w1", 101.0)
    assert heartbeat is not None and heartbeat.busy == 3


def test_a_restarted_worker_replaces_its_earlier_epoch() -> None:
    directory = WorkerDirectory()
    directory.observe(beat("w1", 100.0, epoch="old"))
    directory.observe(beat("w1", 96.0, epoch="new"))  # its clock may differ; the epoch wins
    heartbeat = directory.get("w1", 101.0)
    assert heartbeat is not None and heartbeat.epoch == "new"


def test_a_goodbye_removes_the_worker_at_once() -> None:
    directory = WorkerDirectory()
    directory.observe(beat("w1", 100.0))
    directory.observe(beat("w1", 101.0, epoch="other", leaving=True))  # not this start's
    assert directory.get("w1", 101.0) is not None
    directory.observe(beat("w1", 101.0, leaving=True))
    assert directory.live(101.0) == []


def test_a_worker_is_found_by_the_start_of_its_id() -> None:
    directory = WorkerDirectory()
    for worker in ("abc123", "abd456", "abc"):
        directory.observe(beat(worker, 100.0))
    assert [h.worker_id for h in directory.find("abd", 101.0)] == ["abd456"]
    assert [h.worker_id for h in directory.find("abc", 101.0)] == ["abc"]  # exact first
    assert len(directory.find("ab", 101.0)) == 3
