"""A provider with a fixed pace, in its own process, for benchmarks/remote.py.

Every answer is WORDS pieces, one each PACE_MS milliseconds (streamed, or whole after the
same time), so whatever varies between a direct call and one through LLMOS is LLMOS.
Prints one JSON line with its address and a key, then serves until stdin closes.
    _scripted_provider.py WORDS PACE_MS
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_provider import FakeProvider, Reply


def main() -> None:
    words, pace_ms = int(sys.argv[1]), float(sys.argv[2])
    provider = FakeProvider([Reply(words=tuple(f" w{i}" for i in range(words)),
                                   every_s=pace_ms / 1000)])
    threading.Thread(target=provider.server.serve_forever, daemon=True).start()
    print(json.dumps({"url": provider.url.removesuffix("/v1"), "key": "scripted"}),
          flush=True)
    sys.stdin.read()
    provider.server.shutdown()


if __name__ == "__main__":
    main()
