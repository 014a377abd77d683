"""What checking API keys costs a request (issue 19: at most 0.1 ms at the median).

Two gateways in this process, the same but for keys: one runs open, the other has
keys and is sent a valid one. Both answer ``GET /v1/models`` from their catalog (no
engine, no bus round trip: the request path itself). Requests go through the app
over ASGI in blocks that alternate between the two, so drift on this machine hits
both alike; the medians are compared. Also timed alone: ``KeyBook.principal`` (parse,
look up, SHA-256, compare).

    .venv/bin/python benchmarks/auth.py [--requests 4000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from llmos.auth.roles import Role
from llmos.bus.memory import MemoryBus
from llmos.gateway.app import create_app
from llmos.settings import Settings
from llmos.store import Store


async def one_run(requests: int, block: int) -> tuple[float, float]:
    """The median latency (s) of the open gateway and of the one checking keys."""
    samples: dict[str, list[float]] = {"open": [], "keys": []}
    with tempfile.TemporaryDirectory() as open_home, tempfile.TemporaryDirectory() as home:
        clients = {}
        contexts = []
        for name, directory in (("open", open_home), ("keys", home)):
            settings = Settings(home=Path(directory))
            store = Store(settings.db_url)
            store.migrate()
            store.upsert_deployment("m", "m")
            headers = {}
            if name == "keys":
                _, token = store.keys.create("bench", Role.user, "default", now=time.time())
                headers = {"authorization": f"Bearer {token}"}
            bus = MemoryBus()
            await bus.connect()
            app = create_app(settings, bus, store)
            context = app.router.lifespan_context(app)
            await context.__aenter__()
            contexts.append(context)
            clients[name] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                              base_url="http://localhost", headers=headers)
        for client in clients.values():  # warm up
            for _ in range(200):
                assert (await client.get("/v1/models")).status_code == 200
        for _ in range(requests // block):
            for name, client in clients.items():
                for _ in range(block):
                    started = time.perf_counter()
                    response = await client.get("/v1/models")
                    samples[name].append(time.perf_counter() - started)
                    assert response.status_code == 200
        for client in clients.values():
            await client.aclose()
        for context in contexts:
            await context.__aexit__(None, None, None)
    return statistics.median(samples["open"]), statistics.median(samples["keys"])


def check_alone(n: int = 100_000) -> float:
    """Seconds per ``KeyBook.principal`` of a valid key."""
    from llmos.gateway.auth import KeyBook

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        store = Store(settings.db_url)
        store.migrate()
        _, token = store.keys.create("bench", Role.user, "default", now=time.time())
        book = KeyBook(store)
        book.refresh()
        now = time.time()
        started = time.perf_counter()
        for _ in range(n):
            book.principal(token, now)
        return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"KeyBook.principal alone: {check_alone() * 1e6:.2f} µs")
    added = []
    for run in range(args.runs):
        open_s, keys_s = asyncio.run(one_run(args.requests, args.block))
        added.append(keys_s - open_s)
        print(f"run {run + 1}: median open {open_s * 1e3:.3f} ms, with a key "
              f"{keys_s * 1e3:.3f} ms, added {(keys_s - open_s) * 1e3:+.3f} ms")
    print(f"added by key checking, median of {args.runs} runs: "
          f"{statistics.median(added) * 1e3:+.3f} ms (target ≤ 0.1 ms)")


if __name__ == "__main__":
    main()
