"""Concurrent streams decoding together, LLMOS against llama.cpp's server, and where
each server process's threads spend the time.

``--streams`` chats of ``--tokens`` tokens each start together; the servers take
turns (``--reps`` each, alternating which goes first). Reported per server: the
streams' time per output token (median over reps) and, from ``/proc``, per group of
the server process's threads (the engine's two compute threads, the main thread, the
rest): CPU time, time spent runnable but waiting for a core, and context switches,
each per generated token. Both serve Gemma 3 270M with 4 slots, 2 threads, an 8,192-token
context and poll 0, as in ``openloop.py``; ``LLMOS_ENGINE__*`` settings pass through
to LLMOS from the environment.

    .venv/bin/python benchmarks/streams.py [--streams 2] [--tokens 100] [--reps 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from openloop import Call, one, words  # noqa: E402
from serving import LeanHttpClient, OverHttp, gemma_pair  # noqa: E402


@dataclass(frozen=True)
class ThreadStat:
    run_ns: int = 0
    wait_ns: int = 0
    voluntary: int = 0
    involuntary: int = 0

    def __add__(self, other: ThreadStat) -> ThreadStat:
        return ThreadStat(self.run_ns + other.run_ns, self.wait_ns + other.wait_ns,
                          self.voluntary + other.voluntary,
                          self.involuntary + other.involuntary)

    def __sub__(self, other: ThreadStat) -> ThreadStat:
        return ThreadStat(self.run_ns - other.run_ns, self.wait_ns - other.wait_ns,
                          self.voluntary - other.voluntary,
                          self.involuntary - other.involuntary)


def threads(pid: int) -> dict[int, ThreadStat]:
    """Each thread of ``pid``: its CPU and run-queue time, context switches."""
    stats: dict[int, ThreadStat] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns, wait_ns, _ = map(int, (task / "schedstat").read_text().split())
            status = dict(line.split(":\t", 1) for line in
                          (task / "status").read_text().splitlines() if ":\t" in line)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        stats[int(task.name)] = ThreadStat(
            run_ns, wait_ns, int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]))
    return stats


def spent(before: dict[int, ThreadStat], after: dict[int, ThreadStat]
          ) -> dict[int, ThreadStat]:
    """What each thread did between two readings (a new thread counts from zero)."""
    return {tid: a - before.get(tid, ThreadStat()) for tid, a in after.items()}


async def wave(server: OverHttp, seed: int, streams: int, tokens: int) -> tuple[float, int]:
    """(the streams' mean time per output token, tokens generated)."""
    rng = random.Random(seed)
    client = LeanHttpClient(server.base)
    calls = [Call("chat", {"messages": [{"role": "user", "content": words(rng, 30)}],
                           "max_tokens": tokens, "ignore_eos": True, "temperature": 0})
             for _ in range(streams)]
    outcomes = await asyncio.gather(*(one(server, client, c) for c in calls))
    client.close()
    if not all(o.ok and o.ttft is not None for o in outcomes):
        raise RuntimeError(f"{server.name}: a request failed")
    tpot = statistics.mean((o.e2e - (o.ttft or 0.0)) / max(1, o.tokens - 1) for o in outcomes)
    return tpot, sum(o.tokens for o in outcomes)


def busiest(per_thread: dict[int, ThreadStat]) -> set[int]:
    """The compute threads: the two that ran the most (the engine's ``threads``)."""
    ranked = sorted(per_thread, key=lambda tid: per_thread[tid].run_ns, reverse=True)
    return set(ranked[:2])


def report(totals: dict[int, ThreadStat], generated: int, pid: int) -> dict[str, Any]:
    """Per group of threads: the engine's compute threads, the process's main thread
    (LLMOS's event loop; idle in llama.cpp's), and the rest."""
    compute = busiest(totals)
    groups: dict[str, list[ThreadStat]] = defaultdict(list)
    for tid, stat in totals.items():
        group = "compute" if tid in compute else "main" if tid == pid else "other"
        groups[group].append(stat)
    out: dict[str, Any] = {}
    for group, stats in groups.items():
        out[group] = {
            "threads": len([s for s in stats if s.run_ns or s.voluntary or s.involuntary]),
            "cpu_us_per_token": round(sum(s.run_ns for s in stats) / generated / 1e3, 1),
            "runqueue_us_per_token": round(sum(s.wait_ns for s in stats) / generated / 1e3, 1),
            "switches_per_token": round(sum(s.voluntary for s in stats) / generated, 2),
            "preempted_per_token": round(sum(s.involuntary for s in stats) / generated, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--reps", type=int, default=8)
    args = parser.parse_args()
    tpots: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, dict[int, ThreadStat]] = {}
    generated: dict[str, int] = defaultdict(int)
    with tempfile.TemporaryDirectory(prefix="llmos-streams-") as home, \
            gemma_pair(Path(home), 4, 2, 8192, 0) as pair:
        llama, llmos = pair.llama, pair.llmos
        pids = {llama.name: pair.llama_process.pid, llmos.name: pair.llmos_process.pid}
        for server in (llama, llmos):  # (warm-up)
            asyncio.run(wave(server, 999, args.streams, args.tokens))
        for rep in range(args.reps):
            for server in ([llama, llmos] if rep % 2 == 0 else [llmos, llama]):
                before = threads(pids[server.name])
                tpot, tokens = asyncio.run(wave(server, rep, args.streams, args.tokens))
                after = spent(before, threads(pids[server.name]))
                tpots[server.name].append(tpot)
                generated[server.name] += tokens
                total = totals.setdefault(server.name, {})
                for tid, stat in after.items():
                    total[tid] = total.get(tid, ThreadStat()) + stat
                time.sleep(0.3)
    summary: dict[str, Any] = {"streams": args.streams, "tokens": args.tokens}
    for name, values in tpots.items():
        summary[name] = {"tpot_p50_ms": round(1000 * statistics.median(values), 1),
                         "tpot_ms": [round(1000 * v, 1) for v in values],
                         **report(totals[name], generated[name], pids[name])}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
