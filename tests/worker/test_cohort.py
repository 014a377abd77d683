"""A burst of requests reaches the engine together (pure asyncio, a fake engine)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from llmos.engines.base import (
    CannotMerge,
    Engine,
    EngineConfig,
    EventCallback,
    GenerationResult,
    Kind,
)
from llmos.worker.cohort import _MAX_PASSES, QUIET_S, CohortLauncher


class FakeEngine(Engine):
    """Records how each request reached it; bodies with a "group" may be merged."""

    def __init__(self, *, refuse_merge: bool = False) -> None:
        self.config = EngineConfig(model_path=__file__)  # type: ignore[arg-type]
        self.submitted = 0
        """Requests handed to the launcher so far (the test counts them)."""
        self.calls: list[tuple[str, list[str], int]] = []
        """(how, prompts, requests submitted when the call started)"""
        self.refuse_merge = refuse_merge
        self.delay_s = 0.0
        self.end_gap_s = 0.0
        """Between the ends of a merged call's requests."""
        self._lock = threading.Lock()

    def _record(self, how: str, prompts: list[str]) -> None:
        with self._lock:
            self.calls.append((how, prompts, self.submitted))

    def generate(self, kind: Kind, body: dict[str, Any],
                 on_event: EventCallback) -> GenerationResult:
        self._record("one", [body["prompt"]])
        time.sleep(self.delay_s)
        if body["prompt"] == "fail":
            raise ValueError("engine failed")
        return GenerationResult("stop", len(body["prompt"]), 1)

    def merge_key(self, kind: Kind, body: dict[str, Any]) -> str | None:
        group = body.get("group")
        return str(group) if group is not None else None

    def generate_many(
        self, kind: Kind, bodies: Sequence[dict[str, Any]], on_events: Sequence[EventCallback],
        on_done: Callable[[int, GenerationResult | BaseException], None],
    ) -> None:
        if self.refuse_merge:
            raise CannotMerge("refused")
        self._record("many", [b["prompt"] for b in bodies])
        time.sleep(self.delay_s)
        for i, body in enumerate(bodies):
            time.sleep(self.end_gap_s if i else 0.0)
            on_done(i, GenerationResult("stop", len(body["prompt"]), 1))

    def close(self) -> None:
        pass


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=8)
    yield executor
    executor.shutdown(wait=True)


def never_stop(_: object) -> bool:
    return False


async def submit(launcher: CohortLauncher, engine: FakeEngine, prompt: str,
                 group: str | None = None) -> asyncio.Future[GenerationResult]:
    body: dict[str, Any] = {"prompt": prompt}
    if group is not None:
        body["group"] = group
    future = launcher.submit("completion", body, never_stop)
    engine.submitted += 1
    return future


@pytest.mark.asyncio
async def test_requests_that_arrive_over_consecutive_loop_passes_start_together(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    launcher = CohortLauncher(pool, engine)

    async def one(i: int) -> GenerationResult:
        for _ in range(i):  # request i reaches the launcher i loop passes after the first
            await asyncio.sleep(0)
        return await (await submit(launcher, engine, "p" * i))

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert [r.prompt_tokens for r in results] == list(range(8))
    assert sorted(started for _, _, started in engine.calls) == [8] * 8


@pytest.mark.asyncio
async def test_like_requests_of_a_burst_share_one_engine_call_and_the_rest_go_alone(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    launcher = CohortLauncher(pool, engine)
    futures = [await submit(launcher, engine, p, g) for p, g in (
        ("a", "x"), ("bb", "x"), ("ccc", None), ("dddd", "x"), ("eeeee", "y"))]
    results = await asyncio.gather(*futures)
    assert [r.prompt_tokens for r in results] == [1, 2, 3, 4, 5]
    assert sorted((how, prompts) for how, prompts, _ in engine.calls) == [
        ("many", ["a", "bb", "dddd"]), ("one", ["ccc"]), ("one", ["eeeee"])]
    assert launcher.merged_calls == 1


@pytest.mark.asyncio
async def test_requests_the_engine_refuses_together_run_one_by_one(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine(refuse_merge=True)
    launcher = CohortLauncher(pool, engine)
    futures = [await submit(launcher, engine, p, "x") for p in ("a", "fail", "ccc")]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(outcomes[1], ValueError)
    assert [o.prompt_tokens for o in outcomes if isinstance(o, GenerationResult)] == [1, 3]
    assert sorted(p[0] for how, p, _ in engine.calls) == ["a", "ccc", "fail"]


@pytest.mark.asyncio
async def test_a_lone_request_is_not_held_and_a_burst_after_a_burst_is(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    launcher = CohortLauncher(pool, engine)
    # One client at a time: nothing is held.
    for _ in range(3):
        await asyncio.wait_for(await submit(launcher, engine, "a"), 5)
    assert launcher.holds == 0
    # A burst whose requests come a millisecond apart (HTTP requests parsed in turn):
    # the first one at an idle engine starts alone...
    engine.calls.clear()
    engine.delay_s = 0.02

    async def burst() -> None:
        futures = []
        for _ in range(4):
            futures.append(await submit(launcher, engine, "b", "x"))
            await asyncio.sleep(0.001)
        await asyncio.gather(*futures)

    await burst()
    assert engine.calls[0][1] == ["b"] and launcher.holds == 0
    # ...but the idle start after a burst holds until the burst is in.
    engine.calls.clear()
    await burst()
    assert [(how, len(prompts)) for how, prompts, _ in engine.calls] == [("many", 4)]
    assert launcher.holds == 1


@pytest.mark.asyncio
async def test_clients_whose_requests_ended_together_start_again_together(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    engine.delay_s = 0.02
    engine.end_gap_s = 0.003  # the first client is back before the others have ended
    launcher = CohortLauncher(pool, engine)

    async def client(i: int) -> None:
        for _ in range(2):
            await asyncio.wait_for(await submit(launcher, engine, str(i), "x"), 5)

    await asyncio.gather(*(client(i) for i in range(4)))
    assert [(how, len(prompts)) for how, prompts, _ in engine.calls] == [("many", 4)] * 2
    assert launcher.holds == 1


@pytest.mark.asyncio
async def test_a_burst_smaller_than_the_last_is_held_only_until_it_is_quiet(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    engine.delay_s = 0.02
    launcher = CohortLauncher(pool, engine)
    await asyncio.gather(*[await submit(launcher, engine, "a", "x") for _ in range(4)])
    started = time.perf_counter()
    await asyncio.wait_for(await submit(launcher, engine, "b", "x"), 5)
    held_s = time.perf_counter() - started - engine.delay_s
    assert launcher.holds == 1
    assert held_s < 10 * QUIET_S  # held for QUIET_S, not for the missing three
    assert engine.calls[-1][:2] == ("one", ["b"])


@pytest.mark.asyncio
async def test_queued_work_is_never_held_for_a_burst(pool: ThreadPoolExecutor) -> None:
    # The same situation as above, but the request has waited for a slot already (in
    # the queue, or at the worker): it starts at once, and so do those held with it.
    engine = FakeEngine()
    engine.delay_s = 0.02
    launcher = CohortLauncher(pool, engine)
    await asyncio.gather(*[await submit(launcher, engine, "a", "x") for _ in range(4)])
    queued = launcher.submit("completion", {"prompt": "b", "group": "x"}, never_stop,
                             hold=False)
    await asyncio.wait_for(queued, 5)
    assert launcher.holds == 0
    # one held for a burst goes as soon as queued work joins it
    launcher = CohortLauncher(pool, engine)
    await asyncio.gather(*[await submit(launcher, engine, "a", "x") for _ in range(4)])
    fresh = launcher.submit("completion", {"prompt": "c", "group": "x"}, never_stop)
    await asyncio.sleep(QUIET_S / 3)
    assert launcher.holds == 1
    late = launcher.submit("completion", {"prompt": "d", "group": "x"}, never_stop,
                           hold=False)
    await asyncio.wait_for(asyncio.gather(fresh, late), 5)
    assert engine.calls[-1][:2] == ("many", ["c", "d"])


@pytest.mark.asyncio
async def test_a_steady_flow_is_not_held_back_for_ever(pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    launcher = CohortLauncher(pool, engine)
    futures = []
    for i in range(3 * _MAX_PASSES):
        futures.append(await submit(launcher, engine, str(i)))
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    assert min(started for _, _, started in engine.calls) <= _MAX_PASSES


@pytest.mark.asyncio
async def test_errors_reach_the_caller_and_a_cancelled_request_never_runs(
        pool: ThreadPoolExecutor) -> None:
    engine = FakeEngine()
    launcher = CohortLauncher(pool, engine)
    failing = await submit(launcher, engine, "fail")
    cancelled = await submit(launcher, engine, "never")
    cancelled.cancel()
    with pytest.raises(ValueError, match="engine failed"):
        await failing
    await asyncio.sleep(0.05)
    assert [prompts for _, prompts, _ in engine.calls] == [["fail"]]
    assert launcher.idle


@pytest.mark.asyncio
async def test_requests_left_when_the_pool_has_shut_down_fail_instead_of_hanging() -> None:
    pool = ThreadPoolExecutor(max_workers=2)
    pool.shutdown()
    engine = FakeEngine()
    launcher = CohortLauncher(pool, engine)
    alone = await submit(launcher, engine, "a")
    merged = [await submit(launcher, engine, p, "x") for p in ("b", "c")]
    for future in (alone, *merged):
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(future, 5)
