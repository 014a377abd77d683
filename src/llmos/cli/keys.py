"""``llmos keys``: API keys (create, list, revoke), and ``llmos whoami``."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from llmos.cli.client import UrlOption, call_api, err, server_url
from llmos.cli.logs import parse_span
from llmos.cli.output import (
    JsonOption,
    Listing,
    OutputOption,
    QuietOption,
    age,
    chosen,
    data,
    show,
)

keys_app = typer.Typer(help="API keys: create one (its token is shown once), list, "
                            "revoke, limit.", no_args_is_help=True)

RpmOption = Annotated[int | None, typer.Option(help="requests per minute", min=1)]
TpmOption = Annotated[int | None, typer.Option(help="tokens per minute", min=1)]
ConcurrentOption = Annotated[int | None, typer.Option(help="requests in flight at once",
                                                      min=1)]
PerDayOption = Annotated[int | None, typer.Option(help="tokens per UTC day", min=1)]


def _limits(rpm: int | None, tpm: int | None, concurrent: int | None,
            tokens_per_day: int | None) -> dict[str, int]:
    given = {"rpm": rpm, "tpm": tpm, "concurrent": concurrent,
             "tokens_per_day": tokens_per_day}
    return {k: v for k, v in given.items() if v is not None}


def _shown(limits: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in limits.items() if v is not None) or "-"


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    return f"in {age(at - now)}" if at > now else f"{age(now - at)} ago"


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who or what holds it")],
    role: Annotated[str, typer.Option(
        help="user, operator, admin, or node (a join token for agents and workers)")] = "user",
    project: Annotated[str, typer.Option(help="the project it works in")] = "default",
    expires: Annotated[str | None, typer.Option(
        help="it stops working after this span: 30s, 10m, 12h, 90d (default: never)")
    ] = None,
    rpm: RpmOption = None, tpm: TpmOption = None, concurrent: ConcurrentOption = None,
    tokens_per_day: PerDayOption = None,
    output: OutputOption = None, as_json: JsonOption = False, url: UrlOption = None,
) -> None:
    """Create a key. Its token is printed once, on stdout; keep it (only its hash is
    stored)."""
    body: dict[str, object] = {"name": name, "role": role, "project": project,
                               "limits": _limits(rpm, tpm, concurrent, tokens_per_day)}
    if expires:
        body["expires_in_s"] = parse_span(expires, "'--expires'")
    made = call_api("POST", server_url(url), "/api/keys", json=body)
    if data(made, chosen(output, as_json)):
        return
    sys.stdout.write(made["key"] + "\n")
    err.print(f"key {made['id']} ({made['name']}: {made['role']} in project "
              f"{made['project']}); the token above is shown only this once")


@keys_app.command("ls")
def keys_ls(project: Annotated[str | None, typer.Option(help="only this project's")] = None,
            output: OutputOption = None, as_json: JsonOption = False,
            quiet: QuietOption = False, url: UrlOption = None) -> None:
    """Every key (never their tokens)."""
    params = {"project": project} if project else {}
    rows = call_api("GET", server_url(url), "/api/keys", params=params)["data"]
    now = time.time()
    listing = Listing(("ID", "NAME", "ROLE", "PROJECT", "STATE", "CREATED", "EXPIRES",
                       "LIMITS"))
    for k in rows:
        listing.add(k["id"], k["name"], k["role"], k["project"], k["state"],
                    _when(k["created_at"], now), _when(k["expires_at"], now),
                    _shown(k["limits"]))
    show(rows, [listing], chosen(output, as_json), quiet)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id")],
                url: UrlOption = None) -> None:
    """Revoke a key: every gateway refuses it within a second."""
    revoked = call_api("DELETE", server_url(url), f"/api/keys/{key_id}")
    err.print(f"revoked key {revoked['id']} ({revoked['name']})")


@keys_app.command("limit")
def keys_limit(key_id: Annotated[str, typer.Argument(help="the key's id")],
               rpm: RpmOption = None, tpm: TpmOption = None,
               concurrent: ConcurrentOption = None, tokens_per_day: PerDayOption = None,
               url: UrlOption = None) -> None:
    """Set a key's limits (those not given: no limit)."""
    changed = call_api("PATCH", server_url(url), f"/api/keys/{key_id}", json={
        "limits": _limits(rpm, tpm, concurrent, tokens_per_day)})
    err.print(f"key {changed['id']}: {_shown(changed['limits'])}")


projects_app = typer.Typer(help="Projects: their limits over all their keys.",
                           no_args_is_help=True)


@projects_app.command("limit")
def projects_limit(project: Annotated[str, typer.Argument(help="the project")],
                   rpm: RpmOption = None, tpm: TpmOption = None,
                   concurrent: ConcurrentOption = None, tokens_per_day: PerDayOption = None,
                   url: UrlOption = None) -> None:
    """Set a project's limits, over all its keys together (those not given: no limit)."""
    limits = call_api("PUT", server_url(url), f"/api/projects/{project}/limits",
                      json=_limits(rpm, tpm, concurrent, tokens_per_day))
    err.print(f"project {project}: {_shown(limits)}")


@projects_app.command("show")
def projects_show(project: Annotated[str, typer.Argument(help="the project")],
                  output: OutputOption = None, as_json: JsonOption = False,
                  url: UrlOption = None) -> None:
    """A project's limits."""
    limits = call_api("GET", server_url(url), f"/api/projects/{project}/limits")
    if not data(limits, chosen(output, as_json)):
        sys.stdout.write(f"{project}: {_shown(limits)}\n")


def usage(days: Annotated[int, typer.Option(help="the last N UTC days", min=1, max=366)] = 7,
          project: Annotated[str | None, typer.Option(help="one project's (operators: "
                                                           "their own)")] = None,
          output: OutputOption = None, as_json: JsonOption = False,
          url: UrlOption = None) -> None:
    """Requests and tokens per day: your key's; an operator's project and its keys; an
    admin's every one."""
    params: dict[str, object] = {"days": days}
    if project:
        params["project"] = project
    rows = call_api("GET", server_url(url), "/api/usage", params=params)["data"]
    listing = Listing(("DAY", "SCOPE", "REQUESTS", "TOKENS"))
    for r in rows:
        listing.add(r["day"], r["scope"], str(r["requests"]), str(r["tokens"]),
                    id=r["scope"])
    show(rows, [listing], chosen(output, as_json))


def whoami(output: OutputOption = None, as_json: JsonOption = False,
           url: UrlOption = None) -> None:
    """The key this CLI sends: its id, name, role and project."""
    me = call_api("GET", server_url(url), "/api/whoami")
    if data(me, chosen(output, as_json)):
        return
    if me["key_id"] is None:
        sys.stdout.write("no key: the server runs open (anyone who reaches it is an admin)\n")
        return
    sys.stdout.write(f"key {me['key_id']} ({me['name']}): {me['role']} in project "
                     f"{me['project']}\n")


def audit(
    key: Annotated[str | None, typer.Option("--key", help="only this key's actions")] = None,
    project: Annotated[str | None, typer.Option(help="only this project's")] = None,
    action: Annotated[str | None, typer.Option(
        help="only this endpoint's (create_deployment, revoke_key, …)")] = None,
    since: Annotated[str | None, typer.Option(help="only the last span: 30m, 12h, 7d")
                     ] = None,
    failed: Annotated[bool, typer.Option(help="only refused or failed ones")] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", min=1, max=10_000)] = 100,
    output: OutputOption = None, as_json: JsonOption = False, url: UrlOption = None,
) -> None:
    """The audit log: who changed what through the management API, when, from where,
    with what result (and every refused attempt)."""
    params: dict[str, object] = {"limit": tail, "failed": failed}
    for name, value in (("key_id", key), ("project", project), ("action", action)):
        if value:
            params[name] = value
    if since:
        params["since"] = time.time() - parse_span(since)
    rows = call_api("GET", server_url(url), "/api/audit", params=params)["data"]
    listing = Listing(("WHEN", "KEY", "ROLE", "PROJECT", "ACTION", "STATUS", "CLIENT",
                       "REQUEST"))
    now = time.time()
    for e in rows:
        who = f"{e['key_id']} ({e['key_name']})" if e["key_name"] else (e["key_id"] or "-")
        listing.add(_when(e["at"], now), who, e["role"] or "-", e["project"] or "-",
                    f"{e['method']} {e['path']}" + (f" [{e['action']}]" if e["action"]
                                                     else ""),
                    str(e["status"]), e["client"] or "-", e["request_id"] or "-",
                    id=str(e["id"]))
    show(rows, [listing], chosen(output, as_json))
