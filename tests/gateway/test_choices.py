"""``n`` > 1 waits for every choice, and a failing one cancels the rest."""

from __future__ import annotations

import asyncio

import pytest

from llmos.errors import LLMOSError
from llmos.gateway.routes.choices import _all


@pytest.mark.asyncio
async def test_every_result_in_order() -> None:
    async def after(delay: float, value: int) -> int:
        await asyncio.sleep(delay)
        return value

    assert await _all([after(0.02, 1), after(0.0, 2)]) == [1, 2]


@pytest.mark.asyncio
async def test_a_failure_cancels_the_others() -> None:
    cancelled = asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise LLMOSError("the replica failed")

    with pytest.raises(LLMOSError, match="the replica failed"):
        await asyncio.wait_for(_all([forever(), fail()]), 5)
    assert cancelled.is_set()
