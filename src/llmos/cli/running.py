"""``llmos ps`` (what runs where, how busy) and ``llmos run`` (a model's answer, or a
chat), the verbs Ollama users reach for."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console

from llmos.cli.chat import ChatError, Session, check_model, stream_answer
from llmos.cli.chat import run as run_chat
from llmos.cli.client import UrlOption, call_api, err, http_client, server_url
from llmos.cli.output import (
    JsonOption,
    Listing,
    OutputOption,
    QuietOption,
    age,
    chosen,
    show,
)

out = Console(soft_wrap=True)



def running(base: str, project: str) -> list[dict[str, Any]]:
    """Every replica of every deployment, with its worker's load when it has one."""
    workers = {w["id"]: w for w in call_api("GET", base, "/api/workers")["data"]}
    rows: list[dict[str, Any]] = []
    for d in call_api("GET", base, "/api/deployments", params={"project": project})["data"]:
        detail = call_api("GET", base, f"/api/deployments/{d['name']}",
                          params={"project": project})
        for r in detail["placed"] or []:
            worker = workers.get(r["id"]) or {}
            rows.append({"deployment": d["name"], "model": r["model_version"],
                         "replica": r["id"], "node": r["node"], "state": r["state"],
                         "slots": worker.get("slots"), "busy_slots": worker.get("busy_slots"),
                         "rss": r["rss"], "started_at": worker.get("started_at")})
    return rows


def ps(project: Annotated[str, typer.Option(help="project")] = "default",
       output: OutputOption = None, as_json: JsonOption = False, quiet: QuietOption = False,
       url: UrlOption = None) -> None:
    """What is running: each replica of each deployment, its node, busy slots, memory
    and how long it has been up (``-q``: replica ids)."""
    fmt = chosen(output, as_json)
    rows = running(server_url(url), project)
    if not rows and fmt in ("table", "plain") and not quiet:
        err.print("nothing is running; `llmos deploy NAME MODEL` starts a model")
        return
    listing = Listing(("DEPLOYMENT", "MODEL", "REPLICA", "NODE", "STATE", "BUSY", "MEMORY",
                       "UP"))
    now = time.time()
    for r in rows:
        busy = f"{r['busy_slots']}/{r['slots']}" if r["slots"] is not None else "-"
        listing.add(r["deployment"], r["model"], r["replica"], r["node"], r["state"], busy,
                    f"{r['rss'] / 2**20:.0f} MiB" if r["rss"] else "-",
                    age(now - r["started_at"]) if r["started_at"] else "-", id=r["replica"])
    show(rows, [listing], fmt, quiet)


def run(model: Annotated[str, typer.Argument(help="model id (see llmos ps)")],
        prompt: Annotated[str | None, typer.Argument(
            help="one prompt to answer; none: a chat")] = None,
        system: Annotated[str | None, typer.Option(help="system prompt")] = None,
        max_tokens: Annotated[int, typer.Option(help="tokens per answer")] = 256,
        url: UrlOption = None) -> None:
    """Answer PROMPT with MODEL and exit, or chat with it when no prompt is given."""
    base = server_url(url)
    if prompt is None:
        run_chat(base, model, system, max_tokens, out)
        return
    session = Session(model, system, settings={"max_tokens": max_tokens})
    session.turns.append({"role": "user", "content": prompt})
    with http_client(base) as client:
        try:
            check_model(client, base, model)
            stream_answer(client, session.body(), out)
        except ChatError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(code=1) from None
