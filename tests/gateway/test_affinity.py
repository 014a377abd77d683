"""Prefix-aware routing, pure: heartbeats and decisions in, a replica's queue out."""

from __future__ import annotations

import random

from llmos.bus.messages import Heartbeat
from llmos.gateway.affinity import PrefixRouter
from llmos.gateway.prefixes import Prefixes

NOW = 1000.0
LONG = Prefixes(["p1", "p2", "p3"], [500, 1500, 3000])


def beat(worker: str, *, busy: int = 0, slots: int = 2, prefixes: list[str] | None = None,
         draining: bool = False, leaving: bool = False, sent_at: float = NOW,
         route: str | None = None, deployment: str = "m") -> Heartbeat:
    return Heartbeat(worker_id=worker, epoch="e", deployment=deployment, host="h",
                     slots=slots, busy=busy, draining=draining, sent_at=sent_at,
                     interval_s=5, leaving=leaving, route=route or f"q-{worker}",
                     prefixes=prefixes or [])


def router(min_chars: int = 1000) -> PrefixRouter:
    return PrefixRouter(min_chars=min_chars, rng=random.Random(7))


def test_a_request_goes_to_the_replica_holding_its_longest_prefix() -> None:
    r = router()
    r.observe(beat("a", prefixes=["p1", "p2"]))
    r.observe(beat("b", prefixes=["p1", "p2", "p3"]))
    assert r.choose("m", LONG, NOW) == "q-b"
    assert r.choose("other", LONG, NOW) is None  # another deployment's replicas: no
    assert r.choose("m", Prefixes(["zz"], [5000]), NOW) is None  # nobody holds it


def test_prefixes_shorter_than_the_minimum_take_the_shared_queue() -> None:
    r = router(min_chars=2000)
    r.observe(beat("a", prefixes=["p1", "p2"]))
    assert r.choose("m", LONG, NOW) is None
    r.observe(beat("b", prefixes=["p3"]))
    assert r.choose("m", LONG, NOW) == "q-b"


def test_a_full_replica_gets_nothing_routed_and_what_it_was_sent_counts() -> None:
    r = router()
    r.observe(beat("b", slots=2))  # room elsewhere
    r.observe(beat("a", prefixes=["p3"], slots=2, busy=1))
    assert r.choose("m", LONG, NOW) == "q-a"
    r.sent("q-a", "r1", NOW + 1)  # after the heartbeat: busy 1 + 1 sent = full
    assert r.load("q-a") == 2
    assert r.choose("m", LONG, NOW + 1) is None
    r.done("q-a", "r1", NOW + 1.5)
    assert r.choose("m", LONG, NOW + 1) == "q-a"


def test_a_hot_prefix_spreads_over_the_replicas_holding_it() -> None:
    r = router()
    r.observe(beat("a", prefixes=["p3"], slots=4))
    r.observe(beat("b", prefixes=["p3"], slots=4))
    picked = []
    for i in range(8):
        route = r.choose("m", LONG, NOW + 1)
        assert route is not None
        r.sent(route, f"r{i}", NOW + 1)
        picked.append(route)
    assert sorted(picked) == ["q-a"] * 4 + ["q-b"] * 4  # least loaded first: 4 each
    r.observe(beat("c", slots=4))  # a replica with room that lacks the prefix
    assert r.choose("m", LONG, NOW + 1) is None  # the shared queue: c may take it
    r.observe(beat("c", slots=4, busy=4, sent_at=NOW + 1))
    # Every replica full: waiting at a holder beats computing the prefix again, up to
    # as many waiting there as it has slots.
    for i in range(8):
        route = r.choose("m", LONG, NOW + 1)
        assert route in ("q-a", "q-b")
        r.sent(route, f"w{i}", NOW + 1)
    assert r.load("q-a") == r.load("q-b") == 8
    assert r.choose("m", LONG, NOW + 1) is None


def test_a_deployment_with_one_replica_keeps_to_the_shared_queue() -> None:
    # Its own queue would reach the same cache, and let these requests pass the others
    # waiting in the shared queue for the same slots.
    r = router()
    r.observe(beat("a", prefixes=["p3"]))
    assert r.choose("m", LONG, NOW) is None
    r.observe(beat("b", draining=True))
    assert r.choose("m", LONG, NOW) is None  # (a draining replica takes nothing)
    r.observe(beat("b", sent_at=NOW + 1))
    assert r.choose("m", LONG, NOW + 1) == "q-a"


def test_draining_stale_and_departed_replicas_get_nothing() -> None:
    r = router()
    r.observe(beat("c"))
    r.observe(beat("a", prefixes=["p3"], draining=True))
    assert r.choose("m", LONG, NOW) is None
    r.observe(beat("b", prefixes=["p3"]))
    assert r.choose("m", LONG, NOW) == "q-b"
    assert r.live("q-b", NOW + 10) and not r.live("q-b", NOW + 10.1)  # two intervals
    assert r.choose("m", LONG, NOW + 11) is None
    r.observe(beat("b", leaving=True, sent_at=NOW + 1))
    assert not r.live("q-b", NOW + 1)


def test_a_new_route_of_a_worker_retires_its_old_one() -> None:
    r = router()
    r.observe(beat("a", prefixes=["p3"], route="q-old"))
    r.observe(beat("a", prefixes=["p1"], route="q-new", sent_at=NOW + 1))
    assert not r.live("q-old", NOW + 1) and r.live("q-new", NOW + 1)
    assert r.choose("m", LONG, NOW + 1) is None  # p3 was held by the old queue only


def test_an_answer_teaches_where_its_prefixes_are_before_any_heartbeat() -> None:
    r = router()
    r.observe(beat("a"))
    r.observe(beat("b"))
    assert r.choose("m", LONG, NOW) is None
    r.learn(LONG.hashes, "q-a", NOW)
    assert r.choose("m", LONG, NOW) == "q-a"
    assert r.choose("m", Prefixes(["p1", "p2", "p3", "p4"], [1, 2, 3000, 4000]), NOW) == "q-a"


def test_the_prefix_table_is_bounded() -> None:
    r = PrefixRouter(min_chars=0, max_prefixes=3)
    r.observe(beat("a", prefixes=["h1", "h2", "h3", "h4"]))
    r.observe(beat("b"))
    assert r.choose("m", Prefixes(["h1"], [10]), NOW) is None
    assert r.choose("m", Prefixes(["h4"], [10]), NOW) == "q-a"


def test_a_dropped_route_is_gone_at_once() -> None:
    r = router()
    r.observe(beat("a", prefixes=["p3"]))
    r.observe(beat("b"))
    r.drop("q-a")
    assert not r.live("q-a", NOW) and r.choose("m", LONG, NOW) is None
    r.observe(beat("a", prefixes=["p3"], sent_at=NOW + 1))  # heard again: back
    assert r.choose("m", LONG, NOW + 1) == "q-a"


def test_a_heartbeats_busy_counts_our_requests_once_and_their_end_frees_a_slot() -> None:
    r = router()
    r.sent("q-a", "r1", NOW - 1)  # ours, on the replica when it beat
    r.sent("q-a", "r2", NOW - 1)
    r.observe(beat("a", prefixes=["p3"], slots=2, busy=2))
    r.observe(beat("b", slots=2))
    assert r.load("q-a") == 2 and r.choose("m", LONG, NOW) is None
    r.done("q-a", "r1", NOW + 1)  # ended after the beat: its slot is free now
    assert r.load("q-a") == 1 and r.choose("m", LONG, NOW + 1) == "q-a"
    r.observe(beat("a", prefixes=["p3"], slots=2, busy=2, sent_at=NOW + 2))
    assert r.load("q-a") == 2  # one of ours and one someone else's
