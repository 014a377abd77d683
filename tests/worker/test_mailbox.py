"""Engine threads hand items to the loop in order, with one wake-up for many."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llmos.worker.mailbox import Mailbox


@pytest.mark.asyncio
async def test_items_from_threads_arrive_in_order_with_few_wakeups() -> None:
    loop = asyncio.get_running_loop()
    mailbox = Mailbox(loop)
    wakeups = 0
    real = loop.call_soon_threadsafe

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal wakeups
        wakeups += 1
        return real(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    got: dict[int, list[int]] = {0: [], 1: []}
    try:
        def produce(thread: int) -> None:
            for i in range(2000):
                mailbox.post(got[thread].append, i)

        threads = [threading.Thread(target=produce, args=(t,)) for t in (0, 1)]
        for t in threads:  # the loop is not running callbacks meanwhile (it waits in join)
            t.start()
        for t in threads:
            t.join()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    finally:
        del loop.call_soon_threadsafe
    assert got == {0: list(range(2000)), 1: list(range(2000))}
    assert wakeups == 1  # all 4,000 rode on the first one's drain
