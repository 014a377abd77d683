"""A long prompt that arrives while other streams decode, LLMOS against llama.cpp's server.

The open-loop benchmark (``openloop.py``) pairs the two servers' answers to the same
requests; where LLMOS lost, it lost on long prompts that came while other requests
were generating. This isolates that case: ``--streams`` chats of 120 tokens start
together; 0.4 s later a chat with a system prompt of 150 words and a user message of
``--words`` words (``max_tokens`` 8) arrives. Reported per server: that request's TTFT
(the median over ``--reps``, each rep new text, the servers alternating first) and the
streams' time per output token. Both serve Gemma 3 270M with 4 slots, 2 threads, an
8,192-token context and poll 0, as in ``openloop.py``; ``LLMOS_ENGINE__BATCH_SIZE``
and other settings pass through to LLMOS from the environment.

    .venv/bin/python benchmarks/overlap.py [--reps 8] [--words 400] [--streams 2]
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from openloop import Call, Outcome, one, words  # noqa: E402
from serving import LeanHttpClient, OverHttp, gemma_pair  # noqa: E402


async def scenario(server: OverHttp, seed: int, streams: int, long_words: int
                   ) -> tuple[float, float]:
    """(the long prompt's TTFT, the streams' mean time per output token)."""
    rng = random.Random(seed)
    client = LeanHttpClient(server.base)
    beside = [Call("chat", {"messages": [{"role": "user", "content": words(rng, 30)}],
                            "max_tokens": 120, "ignore_eos": True, "temperature": 0})
              for _ in range(streams)]
    long = Call("chat", {"messages": [{"role": "system", "content": words(rng, 150)},
                                      {"role": "user", "content": words(rng, long_words)}],
                         "max_tokens": 8, "ignore_eos": True, "temperature": 0})

    async def late() -> Outcome:
        await asyncio.sleep(0.4)
        return await one(server, client, long)

    *streamed, answer = await asyncio.gather(*(one(server, client, c) for c in beside), late())
    client.close()
    if answer.ttft is None or not all(o.ok and o.ttft is not None for o in streamed):
        raise RuntimeError(f"{server.name}: a request failed")
    tpot = statistics.mean((o.e2e - (o.ttft or 0.0)) / max(1, o.tokens - 1) for o in streamed)
    return answer.ttft, tpot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--streams", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmos-overlap-") as home, \
            gemma_pair(Path(home), 4, 2, 8192, 0) as pair:
        llama, llmos = pair.llama, pair.llmos
        for server in (llama, llmos):  # (warm-up)
            asyncio.run(scenario(server, 999, args.streams, args.words))
        results: dict[str, list[tuple[float, float]]] = {llama.name: [], llmos.name: []}
        for rep in range(args.reps):
            for server in ([llama, llmos] if rep % 2 == 0 else [llmos, llama]):
                results[server.name].append(
                    asyncio.run(scenario(server, rep, args.streams, args.words)))
                time.sleep(0.3)
    summary: dict[str, Any] = {}
    for name, runs in results.items():
        summary[name] = {"long_ttft_p50": round(statistics.median(r[0] for r in runs), 3),
                         "long_ttft": [round(r[0], 3) for r in runs],
                         "streams_tpot_p50_ms": round(
                             1000 * statistics.median(r[1] for r in runs), 1)}
    pairs = [m[0] / b[0] for m, b in zip(results[llmos.name], results[llama.name], strict=True)]
    summary["ttft_ratio_median"] = round(statistics.median(pairs), 3)
    print(json.dumps({"words": args.words, "streams": args.streams, **summary}))


if __name__ == "__main__":
    main()
