"""How CLI commands reach the running server: its HTTP API, never its internals."""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOption = Annotated[str | None, typer.Option(
    "--url", help=f"server address (default: $LLMOS_URL or {DEFAULT_URL})")]
"""Every command that talks to a server takes it so."""
err = Console(stderr=True)


def server_url(url: str | None) -> str:
    return (url or os.environ.get("LLMOS_URL") or DEFAULT_URL).rstrip("/")


def no_server(url: str) -> typer.Exit:
    err.print(f"[red]No LLMOS server answers at {url}.[/red]\n"
              "Start one with [bold]llmos serve[/bold] (or [bold]make serve[/bold]), "
              "or point to another with --url or LLMOS_URL.")
    return typer.Exit(code=2)


def api_error(response: httpx.Response) -> typer.Exit:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text or response.reason_phrase
    err.print(f"[red]error {response.status_code}:[/red] {message}")
    return typer.Exit(code=1)


def call_api(method: str, base: str, path: str, **kwargs: Any) -> Any:
    """One JSON API call; a server that does not answer or an error ends the command."""
    kwargs.setdefault("timeout", 30)
    try:
        response = httpx.request(method, f"{base}{path}", **kwargs)
    except httpx.HTTPError:
        raise no_server(base) from None
    if response.status_code >= 400:
        raise api_error(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()
