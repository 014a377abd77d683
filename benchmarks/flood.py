"""One key floods a real `llmos serve`; does another key notice? (issue 19: the other
key's p50 latency rises by at most 20 %.)

A server with two keys: ``flooder`` limited (rpm, concurrent), ``victim`` not. The
victim sends short completions one after another and its latencies are timed, alone
and then while the flooder sends as fast as it can from many connections, ignoring
Retry-After (a hostile client; a polite one, like OpenAI's, waits). Alternating
phases, medians per phase; the ratio is reported per run and as a median.

    .venv/bin/python benchmarks/flood.py [--runs 3] [--seconds 10] [--flooders 16]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import free_port

BODY = {"model": "gemma-3-270m", "prompt": "1, 2, 3,", "max_tokens": 8, "temperature": 0}


def start(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"LLMOS_HOME": str(home), "LLMOS_LOG_LEVEL": "WARNING",
                        "LLMOS_ENGINE__SLOTS": "4", "LLMOS_ENGINE__CTX_SIZE": "2048"}
    process = subprocess.Popen([sys.executable, "-m", "llmos", "serve", "--port", str(port),
                                "--init-admin-key"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("llmos serve did not become ready")
        time.sleep(0.25)


def key(base: str, admin: str, name: str, limits: dict[str, int]) -> str:
    made = httpx.post(f"{base}/api/keys", headers={"authorization": f"Bearer {admin}"},
                      json={"name": name, "role": "user", "limits": limits}, timeout=10)
    made.raise_for_status()
    token: str = made.json()["key"]
    return token


async def victim(base: str, token: str, seconds: float) -> list[float]:
    took: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60, headers={
            "authorization": f"Bearer {token}"}) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            response = await client.post("/v1/completions", json=BODY)
            response.raise_for_status()
            took.append(time.perf_counter() - started)
    return took


def flood(base: str, token: str, seconds: float, connections: int,
          out: multiprocessing.Queue[dict[int, int]]) -> None:
    """In its own process (so the victim's timings are not the flood client's)."""
    statuses: dict[int, int] = {}

    async def one(end: float) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60, headers={
                "authorization": f"Bearer {token}"}) as client:
            while time.monotonic() < end:
                status = (await client.post("/v1/completions", json=BODY)).status_code
                statuses[status] = statuses.get(status, 0) + 1

    async def all_of_them() -> None:
        end = time.monotonic() + seconds
        await asyncio.gather(*(one(end) for _ in range(connections)))

    asyncio.run(all_of_them())
    out.put(statuses)


def phase(base: str, victim_key: str, flooder_key: str | None, seconds: float,
          flooders: int) -> tuple[float, dict[int, int]]:
    if flooder_key is None:
        return statistics.median(asyncio.run(victim(base, victim_key, seconds))), {}
    results: multiprocessing.Queue[dict[int, int]] = multiprocessing.Queue()
    flooding = multiprocessing.Process(target=flood, args=(
        base, flooder_key, seconds + 1.0, flooders, results))
    flooding.start()
    time.sleep(0.5)
    took = asyncio.run(victim(base, victim_key, seconds))
    statuses = results.get(timeout=60)
    flooding.join(timeout=30)
    return statistics.median(took), statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--concurrent", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        process, base = start(Path(home))
        try:
            admin = (Path(home) / "admin.key").read_text().strip()
            victim_key = key(base, admin, "victim", {})
            flooder_key = key(base, admin, "flooder", {"rpm": args.rpm,
                                                       "concurrent": args.concurrent})
            time.sleep(1)
            phase(base, victim_key, None, 2, 0)  # warm up
            ratios = []
            for run in range(args.runs):
                alone, _ = phase(base, victim_key, None, args.seconds, 0)
                flooded, statuses = phase(base, victim_key, flooder_key, args.seconds,
                                          args.flooders)
                ratios.append(flooded / alone)
                print(f"run {run + 1}: victim p50 alone {alone * 1e3:.1f} ms, flooded "
                      f"{flooded * 1e3:.1f} ms ({flooded / alone:.2f}x); flooder's answers: "
                      + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items())))
            print(f"median ratio over {args.runs} runs: {statistics.median(ratios):.2f}x "
                  "(target ≤ 1.20x)")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
