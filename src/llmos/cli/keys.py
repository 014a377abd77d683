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
                            "revoke.", no_args_is_help=True)


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    return f"in {age(at - now)}" if at > now else f"{age(now - at)} ago"


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who or what holds it")],
    role: Annotated[str, typer.Option(help="user, operator or admin")] = "user",
    project: Annotated[str, typer.Option(help="the project it works in")] = "default",
    expires: Annotated[str | None, typer.Option(
        help="it stops working after this span: 30s, 10m, 12h, 90d (default: never)")
    ] = None,
    output: OutputOption = None, as_json: JsonOption = False, url: UrlOption = None,
) -> None:
    """Create a key. Its token is printed once, on stdout; keep it (only its hash is
    stored)."""
    body: dict[str, object] = {"name": name, "role": role, "project": project}
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
    listing = Listing(("ID", "NAME", "ROLE", "PROJECT", "STATE", "CREATED", "EXPIRES"))
    for k in rows:
        listing.add(k["id"], k["name"], k["role"], k["project"], k["state"],
                    _when(k["created_at"], now), _when(k["expires_at"], now))
    show(rows, [listing], chosen(output, as_json), quiet)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id")],
                url: UrlOption = None) -> None:
    """Revoke a key: every gateway refuses it within a second."""
    revoked = call_api("DELETE", server_url(url), f"/api/keys/{key_id}")
    err.print(f"revoked key {revoked['id']} ({revoked['name']})")


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
