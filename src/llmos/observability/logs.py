"""JSON (or plain) logs on stderr and in a file, each line carrying the request id."""

from __future__ import annotations

import collections
import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

from llmos.observability.context import request_id_var

LOG_FILE = "llmos.log"
ROTATE_BYTES = 64 * 1024 * 1024
KEEP_FILES = 3
"""The log file turns over at 64 MiB; the three before it are kept (``llmos.log.1``
the newest)."""
LEVELS = ("debug", "info", "warning", "error", "critical")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people at a terminal: time, level, logger, message, then the request id and
    the record's fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        fields = dict(getattr(record, "fields", None) or {})
        if request_id and "request_id" not in fields:
            fields = {"request_id": request_id, **fields}
        extra = " ".join(f"{key}={value}" for key, value in fields.items()
                         if value is not None)
        return f"{text}  {extra}" if extra else text


def configure_logging(level: str = "INFO", *, json_logs: bool | None = None,
                      log_dir: Path | None = None) -> None:
    """Logs on stderr (JSON, or text for people: ``json_logs`` None picks text when
    stderr is a terminal) and, with ``log_dir``, as JSON lines in ``llmos.log`` there
    (what ``llmos logs`` reads)."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if json_logs else TextFormatter())
    handlers: list[logging.Handler] = [stderr]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file = logging.handlers.RotatingFileHandler(
            log_dir / LOG_FILE, maxBytes=ROTATE_BYTES, backupCount=KEEP_FILES)
        file.setFormatter(JsonFormatter())
        handlers.append(file)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "alembic", "aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def search(log_dir: Path, *, request_id: str | None = None, level: str | None = None,
           since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The last ``limit`` lines of the log file in ``log_dir`` (and the files it turned
    over into) that match: the request id, a level at least ``level``, written at or
    after the Unix time ``since``. Oldest first."""
    floor = LEVELS.index(level) if level else 0
    after = None
    if since is not None:
        after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    found: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
    files = [log_dir / f"{LOG_FILE}.{n}" for n in range(KEEP_FILES, 0, -1)]
    for path in [*files, log_dir / LOG_FILE]:
        try:
            lines = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        with lines:
            for line in lines:
                if request_id and request_id not in line:
                    continue  # (most lines: no parse)
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if request_id and entry.get("request_id") != request_id:
                    continue
                if after and str(entry.get("ts", "")) < after:
                    continue
                if floor and _rank(entry.get("level")) < floor:
                    continue
                found.append(entry)
    return list(found)


def _rank(level: object) -> int:
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)
