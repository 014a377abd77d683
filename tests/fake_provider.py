"""A scripted OpenAI-compatible endpoint, for what a real provider will not do on cue
(a 429 with Retry-After, a 503, a stream that stops mid-answer, a silent upstream).

Each request takes the next ``Reply`` of the script (the last one repeats); the
requests it got are kept with their headers and bodies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    words: tuple[str, ...] = ("Hello", " there")
    """A 200's streamed pieces (or, not streamed, its text)."""
    every_s: float = 0.0
    """Pause before each piece."""
    cut_after: int | None = None
    """Drop the connection after this many pieces, with no end."""
    embeddings: list[list[float]] | None = None


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class FakeProvider:
    def __init__(self, script: list[Reply]) -> None:
        self.script = list(script)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms wait between headers and body

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with provider._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    provider.seen.append(Seen(self.path, headers, body, time.monotonic()))
                    reply = (provider.script.pop(0) if len(provider.script) > 1
                             else provider.script[0])
                provider.answer(self, reply, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, h: BaseHTTPRequestHandler, reply: Reply, body: dict[str, Any]) -> None:
        if reply.status != 200:
            payload = json.dumps({"error": {"message": f"scripted {reply.status}",
                                            "type": "scripted"}}).encode()
            h.send_response(reply.status)
            for k, v in (reply.headers | {"content-type": "application/json",
                                          "content-length": str(len(payload))}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
            return
        if h.path.endswith("/embeddings"):
            vectors = reply.embeddings or [[1.0, 0.0]] * len(body["input"])
            payload = json.dumps({"object": "list", "data": [
                {"object": "embedding", "index": i, "embedding": v}
                for i, v in reversed(list(enumerate(vectors)))],
                "usage": {"prompt_tokens": 3 * len(vectors), "total_tokens": 0}}).encode()
            h.send_response(200)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        chat = h.path.endswith("/chat/completions")
        if not body.get("stream"):  # a whole answer, after the same pauses
            for _ in reply.words:
                time.sleep(reply.every_s)
            text = "".join(reply.words)
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": "stop"} if chat else \
                {"index": 0, "text": text, "finish_reason": "stop"}
            payload = json.dumps({
                "id": "scripted", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model", ""),
                "choices": [choice], "usage": {
                    "prompt_tokens": 5, "completion_tokens": len(reply.words),
                    "total_tokens": 5 + len(reply.words)}}).encode()
            h.send_response(200)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("connection", "close")
        h.end_headers()
        for i, word in enumerate(reply.words):
            if reply.cut_after is not None and i >= reply.cut_after:
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)  # the connection drops, no end of stream
                return
            time.sleep(reply.every_s)
            choice = {"index": 0, "delta": {"content": word}} if chat else \
                {"index": 0, "text": word}
            h.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            h.wfile.flush()
        end = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else \
            {"index": 0, "text": "", "finish_reason": "stop"}
        usage = {"prompt_tokens": 5, "completion_tokens": len(reply.words),
                 "total_tokens": 5 + len(reply.words)}
        h.wfile.write(f"data: {json.dumps({'choices': [end]})}\n\n".encode())
        h.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
        h.close_connection = True


@contextmanager
def fake_provider(*script: Reply) -> Iterator[FakeProvider]:
    provider = FakeProvider(list(script) or [Reply()])
    thread = threading.Thread(target=provider.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        provider.server.shutdown()
        provider.server.server_close()
