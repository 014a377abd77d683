"""``llmos config``: client profiles (a server address and an API key under a name)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmos.cli import profiles
from llmos.cli.client import err
from llmos.cli.output import JsonOption, Listing, OutputOption, QuietOption, chosen, show
from llmos.errors import LLMOSError

config_app = typer.Typer(
    help="Client profiles: the server address and API key commands use (stored in "
         "$LLMOS_CONFIG or ~/.config/llmos/config.toml; LLMOS_URL and LLMOS_API_KEY "
         "override them).", no_args_is_help=True)

ProfileOption = Annotated[str | None, typer.Option(
    "--profile", "-p", help="the profile (default: the current one, or 'default')")]


def _load() -> profiles.Profiles:
    try:
        return profiles.load()
    except LLMOSError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=2) from None


@config_app.command("set")
def config_set(
    profile: ProfileOption = None,
    url: Annotated[str | None, typer.Option(help="the server's address")] = None,
    api_key: Annotated[str | None, typer.Option(
        help="the API key to send (read from stdin when '-')")] = None,
) -> None:
    """Set a profile's server address and/or API key (made, and made current, if it is
    the first)."""
    if url is None and api_key is None:
        err.print("[red]error:[/red] give --url and/or --api-key")
        raise typer.Exit(code=2)
    config = _load()
    name = profile or config.current or "default"
    values = config.profiles.setdefault(name, {})
    if url is not None:
        values["url"] = url.rstrip("/")
    if api_key is not None:
        values["api_key"] = (input() if api_key == "-" else api_key).strip()
    if config.current is None:
        config.current = name
    path = profiles.save(config)
    err.print(f"profile {name} saved in {path}")


@config_app.command("use")
def config_use(name: Annotated[str, typer.Argument(help="the profile")]) -> None:
    """Make a profile the current one."""
    config = _load()
    if name not in config.profiles:
        err.print(f"[red]error:[/red] no profile {name!r} (profiles: "
                  f"{', '.join(sorted(config.profiles)) or 'none'})")
        raise typer.Exit(code=2)
    config.current = name
    profiles.save(config)
    err.print(f"now using profile {name}")


@config_app.command("ls")
def config_ls(output: OutputOption = None, as_json: JsonOption = False,
              quiet: QuietOption = False) -> None:
    """The profiles, the current one marked (keys shown masked)."""
    config = _load()
    rows: list[dict[str, Any]] = [
        {"name": name, "current": name == config.current, "url": values.get("url"),
         "api_key": profiles.masked(values["api_key"]) if values.get("api_key") else None}
        for name, values in sorted(config.profiles.items())]
    listing = Listing(("CURRENT", "NAME", "URL", "API KEY"))
    for row in rows:
        listing.add("*" if row["current"] else "", row["name"], row["url"] or "-",
                    row["api_key"] or "-", id=row["name"])
    show(rows, [listing], chosen(output, as_json), quiet)


@config_app.command("rm")
def config_rm(name: Annotated[str, typer.Argument(help="the profile")]) -> None:
    """Remove a profile."""
    config = _load()
    if config.profiles.pop(name, None) is None:
        err.print(f"[red]error:[/red] no profile {name!r}")
        raise typer.Exit(code=2)
    if config.current == name:
        config.current = None
    profiles.save(config)
    err.print(f"profile {name} removed")
