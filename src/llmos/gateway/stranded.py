"""Requests queued for a model that no replica can take any more fail fast (503).

A request is checked for a live, undrained replica when it arrives; one already
queued when the last replica drains, stops or dies would otherwise wait for its
whole deadline. Every half second while any request is in flight (with none, it
sleeps until one is), the gateway looks at the requests that have had no answer yet:
while their model has no replica that takes requests and none still working (a
drained replica finishes what it holds, and a non-streaming answer comes only at its
end), a clock runs; after ``limits.no_replica_wait_s`` they fail with 503
``no_replica`` and are cancelled on the bus, so a replica that comes later does not
run them for nobody. In the same pass, requests sent to a replica's own queue whose
replica left go to the shared queue (``Dispatcher.reroute``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from llmos.errors import NoReplica
from llmos.gateway.state import GatewayState, no_replica_message
from llmos.store import Deployment


def stranded(since: dict[str, float], now: float, waiting: set[str],
             alive: Callable[[str], bool], wait_s: Callable[[str], float]) -> set[str]:
    """The deployments whose waiting requests have had no replica for ``wait_s``
    (pure: ``since`` is the clock per deployment, updated in place)."""
    for deployment in list(since):
        if deployment not in waiting or alive(deployment):
            del since[deployment]
    for deployment in waiting:
        if not alive(deployment):
            since.setdefault(deployment, now)
    return {d for d, started in since.items() if now - started >= wait_s(d)}


async def fail_stranded(state: GatewayState, interval_s: float = 0.5) -> None:
    since: dict[str, float] = {}
    while True:
        # (It sleeps only after a pass that found nothing in flight: that pass, with no
        # request waiting, cleared every clock, so none outlives an idle spell.)
        await state.dispatcher.busy()
        await asyncio.sleep(interval_s)
        # Requests sent to a replica's own queue, whose replica left: the shared queue.
        await state.dispatcher.reroute(time.time())
        waiting = state.dispatcher.unanswered()  # (by the deployments' bus names)
        rows = {key: state.catalog.cached(handles[0].request.deployment,
                                          handles[0].request.project)
                for key, handles in waiting.items()}

        def wait_s(key: str, rows: dict[str, Deployment | None] = rows) -> float:
            return state.replica_wait_s(rows[key])

        for key in stranded(since, time.time(), set(waiting), state.workers.alive, wait_s):
            found, name = rows[key], waiting[key][0].request.deployment
            for handle in waiting[key]:
                handle.fail(NoReplica(
                    no_replica_message(found) if found is not None else
                    f"no replica of {name!r} takes requests any more; retry later"))
            del since[key]
