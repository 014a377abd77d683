"""The processes of benchmarks/gateway.py: a synthetic engine, and what runs it.

    _gateway_procs.py gateway BUS_URL PORT SLOTS   a gateway (FastAPI app, uvicorn);
        on memory:// the worker with the synthetic engine runs in it too
    _gateway_procs.py worker BUS_URL SLOTS         a worker with the synthetic engine
    _gateway_procs.py bare PORT                    the floor: a bare ASGI app streaming
        the same events at the same pace, nothing else

Each prints one JSON line when it is ready, then runs until stdin closes, and then
prints one JSON line of its CPU seconds (process, and the engine's clock thread).
With BENCH_VERBOSE=1 and BENCH_GC_LOG=1, a gateway also logs (stderr) each garbage
collection that took over 5 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from llmos.engines.base import (
    Engine,
    EngineConfig,
    EventCallback,
    GenerationResult,
    Kind,
    PromptReady,
    TextDelta,
)

TOKEN = "~"
"""Every synthetic token's text: nothing else in a stream has it, so a client counts
tokens by counting it."""
INTERVAL_S = 0.02
"""50 tokens/s per stream: a GPU's decode speed for one sequence."""


class _Stream:
    __slots__ = ("done", "left", "on_event", "stopped")

    def __init__(self, on_event: EventCallback, tokens: int) -> None:
        self.on_event = on_event
        self.left = tokens
        self.done = threading.Event()
        self.stopped = False


class SyntheticEngine(Engine):
    """Every running request gets one token per tick of one clock (all in step, as a
    GPU's batch decodes one token per sequence per step), ``max_tokens`` in all."""

    def __init__(self, slots: int) -> None:
        # (model_construct: a synthetic engine may have more slots, one per stream, than
        # the settings allow a real one)
        self.config = EngineConfig.model_construct(model_path=Path("synthetic"), slots=slots,
                                                   ctx_size=0)
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._clock = threading.Thread(target=self._tick, daemon=True, name="clock")
        self.clock_cpu_s = 0.0
        self._clock.start()

    def generate(self, kind: Kind, body: dict[str, Any],
                 on_event: EventCallback) -> GenerationResult:
        if on_event(PromptReady(8)):
            return GenerationResult("stop", 8, 0, stopped=True)
        stream = _Stream(on_event, int(body.get("max_tokens") or 16))
        with self._lock:
            self._streams.append(stream)
        stream.done.wait()
        made = int(body.get("max_tokens") or 16) - stream.left
        return GenerationResult("length", 8, made, stopped=stream.stopped)

    def _tick(self) -> None:
        delta = TextDelta(TOKEN)
        due = time.monotonic()
        while True:
            due += INTERVAL_S
            time.sleep(max(0.0, due - time.monotonic()))
            started = time.thread_time()
            with self._lock:
                streams = list(self._streams)
            ended = []
            for stream in streams:
                if stream.on_event(delta):
                    stream.stopped = True
                else:
                    stream.left -= 1
                if stream.stopped or stream.left <= 0:
                    ended.append(stream)
            if ended:
                with self._lock:
                    for stream in ended:
                        self._streams.remove(stream)
                for stream in ended:
                    stream.done.set()
            self.clock_cpu_s += time.thread_time() - started

    def close(self) -> None:
        pass


def _log_gc_pauses() -> None:
    import gc

    started: list[float] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            took = time.perf_counter() - started[0]
            if took > 0.005:
                print(json.dumps({"gc_gen": info["generation"], "ms": round(took * 1e3, 1),
                                  "collected": info["collected"]}), file=sys.stderr,
                      flush=True)

    gc.callbacks.append(note)


def _wait_for_stdin_close() -> asyncio.Future[None]:
    return asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # type: ignore[return-value]


def _report(engine: SyntheticEngine | None) -> None:
    times = os.times()
    print(json.dumps({"cpu_s": times.user + times.system,
                      "clock_cpu_s": engine.clock_cpu_s if engine else 0.0}), flush=True)


async def _worker(bus_url: str, slots: int, bus: Any = None) -> tuple[Any, SyntheticEngine]:
    from llmos.bus import names, open_bus
    from llmos.worker.worker import Worker

    if bus is None:
        bus = open_bus(bus_url)
        await bus.connect()
    engine = SyntheticEngine(slots)
    worker = Worker(bus, engine, names.bus_name("synthetic", "default"))
    await worker.start()
    return worker, engine


async def gateway(bus_url: str, port: int, slots: int) -> None:
    import uvicorn

    from llmos import heap
    from llmos.bus import open_bus
    from llmos.gateway.app import create_app
    from llmos.gateway.siblings import reuse_port_socket
    from llmos.settings import Settings
    from llmos.store import Store

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), default_model="", bus_url=bus_url)
        store = Store(settings.db_url)
        store.migrate()
        store.upsert_deployment("synthetic", "synthetic")
        bus = open_bus(bus_url)
        await bus.connect()
        worker = engine = None
        if bus_url.startswith("memory://"):
            worker, engine = await _worker(bus_url, slots, bus)
        app = create_app(settings, bus, store, control_plane=True)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_config=None, access_log=False,
                                               lifespan="on"))
        # (SO_REUSEPORT, as `--workers N` binds: several of these may share the port)
        serving = asyncio.create_task(server.serve(sockets=[
            reuse_port_socket("127.0.0.1", port)]))
        while not server.started:
            await asyncio.sleep(0.05)
        heap.settle()  # (as `llmos serve` does once it has started)
        if os.environ.get("BENCH_GC_LOG"):
            _log_gc_pauses()
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        await _wait_for_stdin_close()
        _report(engine)
        server.should_exit = True
        await serving
        if worker is not None:
            await worker.stop(timeout_s=2)
        await bus.close()


async def worker(bus_url: str, slots: int) -> None:
    from llmos import heap

    running, engine = await _worker(bus_url, slots)
    heap.settle()  # (as `llmos worker` does once it has started)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    await _wait_for_stdin_close()
    _report(engine)
    await running.stop(timeout_s=2)
    await running.bus.close()


async def bare(port: int) -> None:
    """The floor of Python serving: uvicorn and an ASGI callable, each stream's events
    written as they are due (one timer per stream), encoded as LLMOS encodes them."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        tokens = int(json.loads(body).get("max_tokens") or 16)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        base = {"id": "cmpl-x", "object": "text_completion", "created": int(time.time()),
                "model": "synthetic"}
        loop = asyncio.get_running_loop()
        due = loop.time()
        for i in range(tokens):
            due += INTERVAL_S
            await asyncio.sleep(max(0.0, due - loop.time()))
            choice = {"index": 0, "finish_reason": "length" if i == tokens - 1 else None,
                      "text": TOKEN, "logprobs": None}
            event = b"data: " + json.dumps(base | {"choices": [choice]}).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    await _wait_for_stdin_close()
    _report(None)
    server.should_exit = True
    await serving


def main() -> None:
    import uvloop

    what, args = sys.argv[1], sys.argv[2:]
    if os.environ.get("BENCH_SWITCH_S"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_S"]))
    if what == "gateway" and os.environ.get("BENCH_PROFILE"):  # the event loop's thread
        import cProfile

        cProfile.runctx("uvloop.run(gateway(args[0], int(args[1]), int(args[2])))",
                        globals(), locals(), os.environ["BENCH_PROFILE"])
    elif what == "gateway":
        uvloop.run(gateway(args[0], int(args[1]), int(args[2])))
    elif what == "worker":
        uvloop.run(worker(args[0], int(args[1])))
    else:
        uvloop.run(bare(int(args[0])))


if __name__ == "__main__":
    main()
