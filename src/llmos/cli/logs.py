"""``llmos logs``: a server's log lines, a request's across the processes that served it."""

from __future__ import annotations

import re
import sys
import time
from typing import Annotated, Any

import typer

from llmos.cli.client import UrlOption, call_api, err, server_url
from llmos.cli.output import JsonOption, OutputOption, chosen, data

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SHOWN_ABOVE = {"ts", "level", "logger", "msg", "exc"}


def parse_span(text: str, option: str = "'--since'") -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` in seconds."""
    match = _SPAN.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a span such as 30s, 10m, 2h or 1d",
                                 param_hint=option)
    return float(match.group(1)) * _SECONDS[match.group(2)]


def line(entry: dict[str, Any]) -> str:
    """One entry as people read it: time, level, logger, message, then ``key=value``."""
    stamp = str(entry.get("ts", ""))
    head = (f"{stamp[11:23] or '-'} {str(entry.get('level', '')).upper():7} "
            f"{entry.get('logger', '')}: {entry.get('msg', '')}")
    fields = " ".join(f"{key}={value}" for key, value in entry.items()
                      if key not in _SHOWN_ABOVE and value is not None)
    text = f"{head}  {fields}" if fields else head
    return f"{text}\n{entry['exc']}" if entry.get("exc") else text


def logs(
    request_id: Annotated[str | None, typer.Option(
        "--request-id", "-r", help="only this request's lines (its x-request-id)")] = None,
    level: Annotated[str | None, typer.Option(
        help="only lines at this level or above: debug, info, warning, error")] = None,
    since: Annotated[str | None, typer.Option(
        help="only lines of the last span: 30s, 10m, 2h, 1d")] = None,
    tail: Annotated[int, typer.Option("--tail", "-n", min=1, max=10_000,
                                      help="at most this many (the last ones)")] = 100,
    output: OutputOption = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """A server's log lines, oldest first. A request's lines (-r) come from the gateway
    that took it and, sent over the bus, from the worker that served it (each names
    itself: logger, worker, attempt)."""
    fmt = chosen(output, as_json)
    params: dict[str, Any] = {"limit": tail}
    if request_id:
        params["request_id"] = request_id
    if level:
        params["level"] = level.lower()
    if since:
        params["since"] = time.time() - parse_span(since)
    found: list[dict[str, Any]] = call_api("GET", server_url(url), "/api/logs",
                                           params=params)["data"]
    if data(found, fmt):
        return
    if not found:
        err.print("no log lines match" + (f" request {request_id}" if request_id else ""))
        raise typer.Exit(code=1)
    for entry in found:
        sys.stdout.write(line(entry) + "\n")
