"""Prefix-aware routing: multi-turn chats with long histories on two replicas.

Two ``llmos worker`` processes (replicas of Gemma 3 270M, each with ``--slots`` slots
and one thread) and one gateway (``llmos serve --no-worker``) on RabbitMQ. The same
seeded workload runs twice per set: once with prefix-aware routing
(``LLMOS_PREFIX_ROUTING=true``, the default) and once with the shared queue alone
(``false``); the order alternates between sets, and each run has sessions of its own
text, so nothing one run computed is in the replicas' caches for the next.

The workload (seeded; ``--seed``):
- **Sessions** arrive as a Poisson process at each rate of ``--rates`` (sessions a
  second) for ``--seconds``; both modes of a set get the same arrivals, lengths,
  parameters and think times, with text of their own.
- **History:** each session starts from a conversation already ~1,500 tokens long
  (a system prompt of 200 words, then 9 earlier user/assistant pairs of 60 words
  each), its own text. Then ``--turns`` turns: each sends the whole history plus a new
  user message of 10-30 words, after an exponential think time (mean ``--think`` s)
  from the previous answer's end; the answer joins the history: what the model said,
  as a chat client resends it (``--history model``, the default), or the workload's
  own text (``--history workload``, as before 2026-12-06, so a turn prefilled the
  last answer again even where its history was cached).
- **Answers:** ``max_tokens`` 12-32 with ``ignore_eos``; temperature 0 or 0.7.

Reported per rate and mode (each set, then pooled): TTFT p50/p99 of the first turns
and of the turns after them, TPOT p50, goodput (turns a second with TTFT <=
``--slo-ttft`` and TPOT <= ``--slo-tpot``; failures count as misses), the mean prompt
length, and the gateway's routing counts
(``llmos_routed_requests_total``). Then routing's ratios against the shared queue.

    .venv/bin/python benchmarks/affinity.py [--sets 2] [--rates 0.05,0.12]
        [--seconds 60] [--turns 4] [--slots 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from openloop import WORDS, pct  # noqa: E402
from serving import MODEL_ID, LeanHttpClient, free_port, wait_ready  # noqa: E402

AMQP_URL = os.environ.get("LLMOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


@dataclass
class Session:
    at: float
    history: list[dict[str, str]]
    questions: list[str]
    answers: list[str]  # the workload's answers (``--history workload``: both modes alike)
    params: list[dict[str, Any]]
    thinks: list[float]


def workload(rate: float, seconds: float, turns: int, think: float, seed: int,
             words_seed: int) -> list[Session]:
    """Arrivals, lengths, parameters and think times from ``seed``; the words from
    ``words_seed`` (so two runs can differ only in their text)."""
    rng, wrng = random.Random(seed), random.Random(words_seed)
    sessions, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return sessions
        history = [{"role": "system", "content": f"Session {words_seed}-{len(sessions)}. "
                    + text(wrng, 200)}]
        for _ in range(9):
            history += [{"role": "user", "content": text(wrng, 60)},
                        {"role": "assistant", "content": text(wrng, 60)}]
        params = []
        for _ in range(turns):
            temperature = rng.choice((0.0, 0.7))
            p: dict[str, Any] = {"max_tokens": rng.randint(12, 32), "ignore_eos": True,
                                 "temperature": temperature}
            if temperature:
                p["seed"] = rng.randint(0, 2**31)
            params.append(p)
        sessions.append(Session(
            t, history, [text(wrng, rng.randint(10, 30)) for _ in range(turns)],
            [text(wrng, p["max_tokens"]) for p in params], params,
            [rng.expovariate(1 / think) for _ in range(turns)]))


@dataclass
class Turn:
    turn: int
    ttft: float | None
    tpot: float | None
    prompt_tokens: int
    ok: bool
    answer: str = ""


async def ask(client: LeanHttpClient, messages: list[dict[str, str]],
              params: dict[str, Any], turn: int) -> Turn:
    body = {"model": MODEL_ID, "messages": messages, "stream": True,
            "stream_options": {"include_usage": True}, **params}
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, int] = {}
    answer: list[str] = []
    try:
        async for line in client.sse_lines("/v1/chat/completions", body, {}):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            pieces = [(c.get("delta") or {}).get("content") or ""
                      for c in event.get("choices", [])]
            if first is None and any(pieces):
                first = time.perf_counter() - started
            answer += pieces
            usage = event.get("usage") or usage
    except Exception as exc:
        print(f"  turn {turn} failed: {exc}", file=sys.stderr)
        return Turn(turn, None, None, 0, False)
    ended = time.perf_counter() - started
    tokens = usage.get("completion_tokens", 0)
    tpot = (ended - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return Turn(turn, first, tpot, usage.get("prompt_tokens", 0), first is not None,
                "".join(answer))


async def run(base: str, sessions: list[Session], resend_answers: bool = True
              ) -> list[Turn]:
    client = LeanHttpClient(base)
    turns: list[Turn] = []
    start = time.perf_counter()

    async def one(s: Session) -> None:
        await asyncio.sleep(max(0.0, start + s.at - time.perf_counter()))
        messages = list(s.history)
        for i, question in enumerate(s.questions):
            messages.append({"role": "user", "content": question})
            turn = await ask(client, list(messages), s.params[i], i)
            turns.append(turn)
            answer = turn.answer if resend_answers and turn.answer else s.answers[i]
            messages.append({"role": "assistant", "content": answer})
            await asyncio.sleep(s.thinks[i])

    await asyncio.gather(*(one(s) for s in sessions))
    client.close()
    return turns


def start_worker(home: Path, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = home / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos", "worker", "--bus", AMQP_URL],
            env=os.environ | env | {"LLMOS_HOME": str(home / name)},
            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while b"consuming" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"worker {name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return process


def start_gateway(home: Path, env: dict[str, str], routing: bool
                  ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmos", "serve", "--no-worker", "--bus", AMQP_URL,
         "--port", str(port)],
        env=os.environ | env | {"LLMOS_HOME": str(home / "gateway"),
                                "LLMOS_PREFIX_ROUTING": str(routing).lower(),
                                "LLMOS_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL, stderr=(home / "gateway.log").open("ab"))
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, base, 120)
    return process, base


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def routed(base: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("llmos_routed_requests_total{"):
            to = line.split('to="', 1)[1].split('"', 1)[0]
            counts[to] = counts.get(to, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def summarize(turns: list[Turn], seconds: float, slo_ttft: float, slo_tpot: float
              ) -> dict[str, Any]:
    first = [t.ttft for t in turns if t.turn == 0 and t.ttft is not None]
    later = [t.ttft for t in turns if t.turn > 0 and t.ttft is not None]
    tpot = [t.tpot for t in turns if t.tpot is not None]
    good = [t for t in turns if t.ok and t.ttft is not None and t.ttft <= slo_ttft
            and (t.tpot is None or t.tpot <= slo_tpot)]
    return {"turns": len(turns), "failed": sum(not t.ok for t in turns),
            "first_ttft_p50": pct(first, 0.5), "first_ttft_p99": pct(first, 0.99),
            "later_ttft_p50": pct(later, 0.5), "later_ttft_p99": pct(later, 0.99),
            "tpot_p50": pct(tpot, 0.5), "goodput": round(len(good) / seconds, 3),
            "prompt_tokens_mean": round(statistics.mean(
                [t.prompt_tokens for t in turns if t.ok] or [0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sets", type=int, default=2)
    parser.add_argument("--rates", default="0.05,0.12", help="sessions a second, a list")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--think", type=float, default=1.0)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slo-ttft", type=float, default=3.0)
    parser.add_argument("--slo-tpot", type=float, default=0.15)
    parser.add_argument("--history", choices=("model", "workload"), default="model",
                        help="a session's assistant turns: what the model answered, or "
                             "the workload's text")
    args = parser.parse_args()
    env = {"LLMOS_ENGINE__SLOTS": str(args.slots),
           "LLMOS_ENGINE__CTX_SIZE": str(args.slots * 2560),
           "LLMOS_ENGINE__THREADS": "1", "LLMOS_ENGINE__POLL": "0",
           "LLMOS_ENGINE__CACHE_RAM_MIB": "256"}
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[float, dict[str, list[list[Turn]]]] = {
        r: {"routing": [], "shared": []} for r in rates}
    counts: dict[float, dict[str, list[dict[str, float]]]] = {
        r: {"routing": [], "shared": []} for r in rates}
    with tempfile.TemporaryDirectory(prefix="llmos-affinity-") as tmp:
        home = Path(tmp)
        workers = [start_worker(home, f"worker-{i}", env) for i in range(2)]
        try:
            for rate in rates:
                for n in range(args.sets):
                    modes = [("routing", True), ("shared", False)]
                    for i, (mode, on) in enumerate(modes if n % 2 == 0 else modes[::-1]):
                        # The same arrivals and lengths for both modes; text of its own,
                        # so nothing a run before computed is in the replicas' caches.
                        seed = args.seed * 1000 + round(rate * 100) * 10 + n
                        sessions = workload(rate, args.seconds, args.turns, args.think,
                                            seed, seed * 10 + i)
                        gateway, base = start_gateway(home, env, on)
                        try:
                            turns = asyncio.run(run(base, sessions,
                                                    args.history == "model"))
                            counts[rate][mode].append(routed(base))
                        finally:
                            stop(gateway)
                        results[rate][mode].append(turns)
                        summary = summarize(turns, args.seconds, args.slo_ttft, args.slo_tpot)
                        print(f"rate {rate} set {n + 1} {mode}: {len(sessions)} sessions, "
                              f"{json.dumps(summary)} routed {counts[rate][mode][-1]}",
                              flush=True)
        finally:
            for worker in workers:
                stop(worker)

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 2) if x and y else None

    report: dict[str, Any] = {"args": vars(args), "rates": {}}
    for rate, by_mode in results.items():
        pooled = {mode: summarize([t for run_ in runs for t in run_],
                                  args.seconds * len(runs), args.slo_ttft, args.slo_tpot)
                  for mode, runs in by_mode.items()}
        a, b = pooled["routing"], pooled["shared"]
        report["rates"][str(rate)] = {
            "pooled": pooled, "routed": counts[rate],
            "later_ttft_p50_shared_over_routing": ratio(b["later_ttft_p50"],
                                                        a["later_ttft_p50"]),
            "goodput_routing_over_shared": ratio(a["goodput"], b["goodput"])}
    print(json.dumps(report, indent=2))

if __name__ == "__main__":
    main()
