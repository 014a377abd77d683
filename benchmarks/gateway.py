"""The per-token path without an engine: how many streamed tokens one gateway delivers.

A synthetic engine (``_gateway_procs.py``) gives every running request one token each
20 ms (50 tokens/s, a GPU's decode speed for one sequence; all streams in step, as a
batch decodes), and the tokens travel the whole path: gateway -> bus -> worker -> bus
-> gateway -> SSE -> client. ``N`` clients each keep one streamed completion of
``--tokens`` tokens open at a time (new ones start as old ones end; starts staggered
over the first second), for ``--seconds`` after a warm-up.

Sets:
- ``memory://``: one process holds the gateway, the bus and the worker;
- ``amqp://`` (``--amqp URL``): the gateway and the worker are separate processes, with
  RabbitMQ between them;
- ``amqp2`` (``amqpN``): the same with N gateway processes on one port (``SO_REUSEPORT``,
  as ``--workers N`` runs them), each with its own reply queue;
- ``bare``: the floor of Python serving, a bare ASGI app on uvicorn writing the same
  events at the same pace, nothing else.

Reported per set and number of streams: tokens/s delivered (all streams, counted at
the client), time to first token p50/p99 (from the connect; the engine's first tick
is up to 20 ms away), inter-token delivery p50/p99 (the gap between a stream's consecutive
tokens reaching the client; tokens read together count as gaps of 0), and CPU per
token of each process (RabbitMQ's too; the synthetic engine's clock thread left out),
and how busy the whole machine was (1.0: both cores). A set
*sustains* a number of streams when it delivers >= 95 % of the tokens due and the gap
p99 is within 2x the engine's interval (40 ms).

The client is a raw asyncio HTTP/1.1 client in this process (one connection per
request), on the same 2 cores; its CPU is reported too.

    .venv/bin/python benchmarks/gateway.py [--streams 100,200,400] [--sets memory,bare]
        [--amqp amqp://guest:guest@127.0.0.1:5672/] [--seconds 4] [--tokens 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROCS = ROOT / "benchmarks" / "_gateway_procs.py"
INTERVAL_S = 0.02
TOKEN = b"~"
TICK = os.sysconf("SC_CLK_TCK")
VERBOSE = bool(os.environ.get("BENCH_VERBOSE"))


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


def broker_pid() -> int | None:
    """RabbitMQ's Erlang VM, to say where the CPU went on amqp://."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
            except OSError:
                continue
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, *args: str) -> None:
        # (stderr, the processes' logs, dropped unless BENCH_VERBOSE)
        self.popen = subprocess.Popen([sys.executable, str(PROCS), *args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=None if VERBOSE else subprocess.DEVNULL,
                                      text=True)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"{args[0]} process failed to start")
        self.pid = int(json.loads(line)["pid"])

    def stop(self) -> dict[str, float]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.close()
        line = self.popen.stdout.readline()
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        return json.loads(line) if line else {"cpu_s": 0.0, "clock_cpu_s": 0.0}


@dataclass
class Tally:
    window: tuple[float, float] = (0.0, 0.0)
    tokens_in_window: int = 0
    tokens_all: int = 0
    gaps: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    """Time to first token of the streams that started in the window."""
    errors: int = 0


async def one_stream(port: int, tokens: int, tally: Tally) -> None:
    body = json.dumps({"model": "synthetic", "prompt": "hi", "max_tokens": tokens,
                       "stream": True}).encode()
    sent = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: localhost\r\n"
                 b"content-type: application/json\r\nconnection: close\r\n"
                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    last: float | None = None
    got = 0
    start, end = tally.window
    head = True
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.monotonic()
            if head:
                if not data.startswith(b"HTTP/1.1 200"):
                    tally.errors += 1
                    return
                head = False
            k = data.count(TOKEN)
            if not k:
                continue
            if not got and start <= sent <= end:
                tally.first.append(now - sent)
            got += k
            tally.tokens_all += k
            if start <= now <= end:
                tally.tokens_in_window += k
                if last is not None:
                    tally.gaps.append(now - last)
                tally.gaps.extend([0.0] * (k - 1))
            last = now
    finally:
        writer.close()
    if got != tokens:
        tally.errors += 1


async def drive(port: int, streams: int, tokens: int, warmup_s: float, seconds: float,
                pids: list[int]) -> dict[str, Any]:
    loop_start = time.monotonic()
    tally = Tally(window=(loop_start + warmup_s, loop_start + warmup_s + seconds))
    stop_at = tally.window[1]
    rng = random.Random(0)

    async def client(delay: float) -> None:
        await asyncio.sleep(delay)
        while time.monotonic() < stop_at:
            try:
                await one_stream(port, tokens, tally)
            except OSError:
                tally.errors += 1
                await asyncio.sleep(0.05)

    clients = [asyncio.create_task(client(rng.uniform(0, 1.0))) for _ in range(streams)]
    await asyncio.sleep(max(0.0, tally.window[0] - time.monotonic()))
    before = {pid: cpu_s(pid) for pid in pids}
    mine = time.process_time()
    busy_before, total_before = machine_busy()
    await asyncio.sleep(max(0.0, tally.window[1] - time.monotonic()))
    after = {pid: cpu_s(pid) for pid in pids}
    client_cpu = time.process_time() - mine
    busy_after, total_after = machine_busy()
    await asyncio.gather(*clients)
    gaps = sorted(tally.gaps)

    def q(p: float) -> float:
        return round(gaps[min(len(gaps) - 1, int(p * len(gaps)))] * 1000, 1) if gaps else 0.0

    first = sorted(tally.first)

    def ttft(p: float) -> float:
        return round(first[min(len(first) - 1, int(p * len(first)))] * 1000, 1) if first else 0.0

    due = streams * seconds / INTERVAL_S
    delivered = tally.tokens_in_window
    return {"streams": streams, "tokens_per_s": round(delivered / seconds),
            "due_per_s": round(due / seconds), "gap_p50_ms": q(0.5), "gap_p99_ms": q(0.99),
            "ttft_p50_ms": ttft(0.5), "ttft_p99_ms": ttft(0.99),
            "errors": tally.errors, "tokens_all": tally.tokens_all,
            "cpu_s": {str(pid): round(after[pid] - before[pid], 2) for pid in pids},
            "cpu_us_per_token": {str(pid): round((after[pid] - before[pid]) / max(1, delivered)
                                                 * 1e6, 1) for pid in pids},
            "client_cpu_us_per_token": round(client_cpu / max(1, delivered) * 1e6, 1),
            "machine_busy": round((busy_after - busy_before) / (total_after - total_before), 2),
            "sustained": delivered >= 0.95 * due and q(0.99) <= 2 * INTERVAL_S * 1000}


async def warm_up(port: int) -> None:
    """Every gateway process learns of the worker (new connections: each may go to
    another process)."""
    await asyncio.gather(*(one_stream(port, 1, Tally()) for _ in range(8)))


def run_level(kind: str, streams: int, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    procs: dict[str, Proc] = {}
    slots = str(streams + 8)
    if kind == "bare":
        procs["gateway"] = Proc("bare", str(port))
    elif kind == "memory":
        procs["gateway"] = Proc("gateway", "memory://", str(port), slots)
    else:  # amqp, or amqpN: N gateway processes on one port (as `--workers N` runs)
        procs["worker"] = Proc("worker", args.amqp, slots)
        count = int(kind.removeprefix("amqp") or 1)
        for i in range(count):
            procs[f"gateway{i + 1}" if count > 1 else "gateway"] = Proc(
                "gateway", args.amqp, str(port), slots)
    try:
        pids = [p.pid for p in procs.values()]
        broker = broker_pid() if kind.startswith("amqp") else None
        if broker is not None:
            pids.append(broker)
        asyncio.run(warm_up(port))
        result = asyncio.run(drive(port, streams, args.tokens, args.warmup, args.seconds,
                                   pids))
    finally:
        reports = {name: p.stop() for name, p in procs.items()}
    names = {str(p.pid): name for name, p in procs.items()} | {str(broker): "rabbitmq"}
    result["cpu_us_per_token"] = {names[k]: v for k, v in result["cpu_us_per_token"].items()}
    result["cpu_s"] = {names[k]: v for k, v in result["cpu_s"].items()}
    # The synthetic engine's own clock thread, per token over the process's life.
    clock = sum(r.get("clock_cpu_s", 0.0) for r in reports.values())
    result["engine_clock_us_per_token"] = round(clock / max(1, result["tokens_all"]) * 1e6, 1)
    result["set"] = kind
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="100,200,400")
    parser.add_argument("--sets", default="memory,bare")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tokens", type=int, default=50)
    args = parser.parse_args()
    results = []
    for streams in (int(s) for s in args.streams.split(",")):
        for kind in args.sets.split(","):
            result = run_level(kind, streams, args)
            results.append(result)
            print(json.dumps(result), flush=True)
    best: dict[str, int] = {}
    for r in results:
        if r["sustained"]:
            best[r["set"]] = max(best.get(r["set"], 0), r["tokens_per_s"])
    print(json.dumps({"most_tokens_per_s_sustained": best}))


if __name__ == "__main__":
    main()
