"""The garbage collector's settings for a serving process (gateway, worker).

Two things cost a streaming server most of its collector time:

- Full (second-generation) collections walk every tracked object of the process: the
  modules, the app and its schemas, tens of milliseconds here, in the middle of
  whichever tokens they interrupt. What startup built stays for good, so ``settle``
  moves it out of the collector's sight (``gc.freeze``).
- CPython collects its youngest generation every 700 net allocations of containers. A
  stream allocates a few per token (a chunk, its event, a dict), so at thousands of
  tokens a second the young collections run hundreds of times a second, and each one
  that survives pushes the older generations towards a full collection. With 400
  streams at 50 tokens/s (``benchmarks/gateway.py``, one process on ``memory://``),
  the collector took about a third of the process's CPU and stalled delivery for
  100-130 ms at each full collection (a token-gap p99 of ~150 ms); with startup frozen
  and young collections every 10,000 allocations, the gap p99 is ~25 ms and the CPU
  per token falls by about a third.

Memory is not the price: a young generation of 10,000 objects is a few megabytes at
most, and cycles are still collected.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net container allocations between young collections (CPython's default: 700)."""


def settle() -> None:
    """Once startup is done: collect, freeze what is left (it lives as long as the
    process), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
