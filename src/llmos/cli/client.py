"""How CLI commands reach the running server: its HTTP API, never its internals."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from llmos.cli import profiles
from llmos.errors import LLMOSError

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOption = Annotated[str | None, typer.Option(
    "--url", help=f"server address (default: $LLMOS_URL, the profile's, or {DEFAULT_URL})")]
"""Every command that talks to a server takes it so."""
err = Console(stderr=True)


@dataclass
class _Chosen:
    profile: str | None = None
    """``llmos --profile NAME`` (or $LLMOS_PROFILE)."""
    api_key: str | None = None
    """``llmos --api-key KEY``."""


chosen_profile = _Chosen()


def _profile() -> dict[str, str]:
    try:
        return profiles.load().active(chosen_profile.profile)
    except LLMOSError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=2) from None


def server_url(url: str | None) -> str:
    """The flag, $LLMOS_URL, the profile's url, or the default."""
    found = url or os.environ.get("LLMOS_URL") or _profile().get("url") or DEFAULT_URL
    return found.rstrip("/")


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer …`` from --api-key, $LLMOS_API_KEY or the profile, if one
    has a key."""
    key = (chosen_profile.api_key or os.environ.get("LLMOS_API_KEY")
           or _profile().get("api_key"))
    return {"Authorization": f"Bearer {key}"} if key else {}


def http_client(base: str, timeout: httpx.Timeout | float | None = None) -> httpx.Client:
    """A client for the server at ``base``, with the API key when one is set."""
    return httpx.Client(base_url=base, headers=auth_headers(),
                        timeout=timeout if timeout is not None
                        else httpx.Timeout(600, connect=5))


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
    kwargs["headers"] = {**auth_headers(), **kwargs.get("headers", {})}
    try:
        response = httpx.request(method, f"{base}{path}", **kwargs)
    except httpx.HTTPError:
        raise no_server(base) from None
    if response.status_code >= 400:
        raise api_error(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()
