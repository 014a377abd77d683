"""Hostile inputs against a running `llmos serve`: time to each one's error, and time for
the slots to be free again after clients leave mid-request (issue 15's targets: 2 s
and 1 s). Prints a table and writes JSON.

    python benchmarks/hostile.py --url http://127.0.0.1:8000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx

MODEL = "gemma-3-270m"


def busy(url: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("llmos_worker_busy_slots{"):
            total += float(line.rpartition(" ")[2])
    return total


def post(url: str, path: str, body: bytes, **headers: str) -> Callable[[], int]:
    def send() -> int:
        return httpx.post(f"{url}{path}", content=body, timeout=120, headers={
            "content-type": "application/json", **headers}).status_code
    return send


def cases(url: str) -> dict[str, Callable[[], int]]:
    chat = {"model": MODEL, "max_tokens": 4}
    return {
        "100,000 messages": post(url, "/v1/chat/completions", json.dumps(
            chat | {"messages": [{"role": "user", "content": "hi"}] * 100_000}).encode()),
        "2,000 messages (under the cap)": post(url, "/v1/chat/completions", json.dumps(
            chat | {"messages": [{"role": "user", "content": "hi"}] * 2_000}).encode()),
        "20 MB prompt": post(url, "/v1/completions",
                             b'{"model": "m", "prompt": "' + b"hello " * 3_500_000 + b'"}'),
        "1 MB prompt": post(url, "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "hello " * 170_000}).encode()),
        "300,000 logit_bias entries": post(url, "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "hi", "logit_bias": {str(i): 1 for i in range(300_000)}}
        ).encode()),
        "cross-site form post": post(url, "/v1/completions", b"model=m&prompt=hi", **{
            "content-type": "application/x-www-form-urlencoded",
            "origin": "https://evil.example"}),
        "rebinding Host": post(url, "/v1/completions", b"{}", host="rebind.evil.example"),
        "1 MB model name": post(url, "/v1/completions", json.dumps(
            {"model": "a" * 1_000_000, "prompt": "hi"}).encode()),
    }


def leave_during_prefill(url: str, stream: bool) -> float:
    """Seconds from the clients closing their sockets to no busy slot."""
    host, port = url.removeprefix("http://").split(":")
    prompt = " ".join(f"w{i}" for i in range(60))
    socks = []
    for i in range(4):
        data = json.dumps({"model": MODEL, "prompt": f"{i} {prompt}", "max_tokens": 16,
                           "stream": stream, "ignore_eos": True}).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nhost: {host}:{port}\r\n"
                     f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
                     .encode() + data)
        socks.append(sock)
    while busy(url) < 1:
        time.sleep(0.005)
    for sock in socks:
        sock.close()
    closed = time.monotonic()
    while busy(url) > 0:
        time.sleep(0.01)
    return time.monotonic() - closed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("hostile.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    for name, send in cases(args.url).items():
        times, statuses = [], set()
        for _ in range(args.runs):
            started = time.monotonic()
            statuses.add(send())
            times.append(time.monotonic() - started)
        results[name] = {"median_s": statistics.median(times), "max_s": max(times),
                         "statuses": sorted(statuses)}
    for stream in (False, True):
        frees = [leave_during_prefill(args.url, stream) for _ in range(args.runs)]
        results[f"slots free after clients leave ({'stream' if stream else 'plain'})"] = {
            "median_s": statistics.median(frees), "max_s": max(frees), "statuses": []}
    print(f"{'case':<48} {'median s':>9} {'max s':>7}  status")
    for name, r in results.items():
        print(f"{name:<48} {r['median_s']:>9.3f} {r['max_s']:>7.3f}  {r['statuses']}")
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
