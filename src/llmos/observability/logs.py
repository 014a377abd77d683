"""JSON (or plain) logs on stderr and in a file, each line carrying the request id."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from llmos.observability.context import request_id_var


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
        file = logging.FileHandler(log_dir / "llmos.log")
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
