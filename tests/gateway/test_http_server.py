"""The HTTP server's main loop: it wakes once a second, not ten times, and an exit asked
for (a signal, or ``should_exit`` set) begins at once, not at its next tick."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from llmos.gateway.http_server import Server
from tests.waiting import eventually


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.asyncio
async def test_the_main_loop_ticks_once_a_second_and_exits_at_once() -> None:
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                   lifespan="off"))
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(counter)
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    await asyncio.sleep(1.5)
    assert 1 <= len(ticks) <= 3  # (uvicorn's own loop: 15)
    assert all(counter % 10 == 0 for counter in ticks)  # each refreshes the Date header
    assert any(name == b"date" for name, _ in server.server_state.default_headers)
    asked = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # (what its signal handler calls)
    await asyncio.wait_for(serving, 5.0)
    assert time.monotonic() - asked < 0.5  # not at the next tick, up to a second away
