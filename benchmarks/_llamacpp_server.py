"""Column (b) of benchmarks/serving.py: llama.cpp's own HTTP server in its own process.

Prints one JSON line with its address and API key, then serves until stdin closes.
    _llamacpp_server.py MODEL SLOTS THREADS CTX POLL [CHAT_TEMPLATE_FILE]
"""

from __future__ import annotations

import json
import secrets
import sys


def main() -> None:
    import xllamacpp

    model, slots, threads, ctx, poll = sys.argv[1], *map(int, sys.argv[2:6])
    p = xllamacpp.CommonParams()
    p.model.path = model
    p.n_parallel = slots
    p.n_ctx = ctx
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.cpuparams.poll = poll
    p.cpuparams_batch.poll = poll
    p.cache_ram_mib = 64
    p.n_predict = -1
    p.verbosity = 0
    if len(sys.argv) > 6:  # a Jinja chat template, rendered by llama.cpp's own engine
        p.use_jinja = True
        with open(sys.argv[6], encoding="utf-8") as template:
            p.chat_template = template.read()
    p.ui = False
    p.endpoint_metrics = True
    key = secrets.token_urlsafe(16)
    p.api_keys = [key]
    server = xllamacpp.Server(p)
    print(json.dumps({"url": server.listening_address, "key": key}), flush=True)
    sys.stdin.read()
    del server


if __name__ == "__main__":
    main()
