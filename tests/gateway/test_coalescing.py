"""Tokens that pile up while a stream's last write waits travel together: a slow reader
gets every token, in order, in fewer writes than chunks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmos.bus.memory import MemoryBus
from llmos.engines.base import (
    Engine,
    EngineConfig,
    EventCallback,
    GenerationResult,
    Kind,
    TextDelta,
)
from llmos.gateway.app import create_app
from llmos.settings import Settings
from llmos.store import Store
from llmos.worker.worker import Worker

TOKENS = 120


class Quick(Engine):
    """A token a millisecond: far faster than the reader below takes them."""

    def __init__(self) -> None:
        self.config = EngineConfig(model_path=Path("quick"), slots=2, ctx_size=0)

    def generate(self, kind: Kind, body: dict[str, Any],
                 on_event: EventCallback) -> GenerationResult:
        for i in range(TOKENS):
            time.sleep(0.001)
            if on_event(TextDelta(f"t{i} ")):
                return GenerationResult("stop", 1, i, stopped=True)
        return GenerationResult("length", 1, TOKENS)

    def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_a_slow_reader_gets_every_token_in_order_in_fewer_writes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, default_model="")
    store = Store(settings.db_url)
    store.migrate()
    store.upsert_deployment("m", "m")
    bus = MemoryBus()
    await bus.connect()
    worker = Worker(bus, Quick(), "m")
    await worker.start()
    app = create_app(settings, bus, store, control_plane=True)
    app.state.gateway.workers.directory.observe(worker.heartbeat())
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": TOKENS,
                       "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions",
             "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    done = asyncio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    writes: list[bytes] = []
    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            writes.append(message.get("body", b""))
            await asyncio.sleep(0.02)  # a slow reader: each write waits for it
            if not message.get("more_body"):
                done.set()

    try:
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), timeout=60)
    finally:
        done.set()
        await worker.stop(timeout_s=2)
        await bus.close()
        store.close()
    assert status == [200]
    events = [json.loads(line[len("data: "):])
              for line in b"".join(writes).decode().split("\n\n")
              if line.startswith("data: {")]
    text = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
    assert text == "".join(f"t{i} " for i in range(TOKENS))
    # 120 tokens come over ~0.12 s; a reader taking 20 ms a write needs far fewer writes.
    assert len(writes) < TOKENS / 3, len(writes)
