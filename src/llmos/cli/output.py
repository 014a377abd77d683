"""How listing and show commands print: tables for people, whole rows for scripts, JSON
or YAML of the API's data.

- ``-o table`` (the default on a terminal): rich tables; a cell too wide folds onto
  more lines, nothing is cut.
- ``-o plain`` (the default when stdout is not a terminal: a pipe, a file): a header
  and one line per row, columns aligned by spaces, every value whole (names with their
  ``@N``, digests with all their hex digits): ``awk``, ``grep`` and ``cut`` work.
- ``-o json`` / ``--json``, ``-o yaml``: the API's data as it is (docs/api.md names the
  fields), for ``jq`` and friends.
- ``-q``: the ids alone, one per line (``docker ps -q``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import typer

Format = Literal["table", "plain", "json", "yaml"]
FORMATS: tuple[Format, ...] = ("table", "plain", "json", "yaml")

OutputOption = Annotated[str | None, typer.Option(
    "--output", "-o", help="table, plain, json or yaml (default: table on a terminal, "
    "plain rows otherwise)")]
JsonOption = Annotated[bool, typer.Option("--json", help="the same as -o json")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="ids only, one per line")]


def chosen(output: str | None, as_json: bool = False) -> Format:
    """The format asked for, or the default for where stdout goes."""
    if as_json:
        return "json"
    if output is None:
        return "table" if sys.stdout.isatty() else "plain"
    if output not in FORMATS:
        raise typer.BadParameter(f"{output!r} is not one of {', '.join(FORMATS)}",
                                 param_hint="'--output' / '-o'")
    return output


@dataclass
class Listing:
    """Rows to print as a table (or plain rows), and the id of each."""

    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    title: str | None = None

    def add(self, *cells: str, id: str | None = None) -> None:
        self.rows.append(cells)
        self.ids.append(id if id is not None else cells[0])


def age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def data(value: Any, fmt: Format) -> bool:
    """Prints ``value`` as JSON or YAML when that is the format; True if it did."""
    if fmt == "json":
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        return True
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))
        return True
    return False


def ids(listing: Listing) -> None:
    for each in listing.ids:
        sys.stdout.write(each + "\n")


def table(listing: Listing, fmt: Format) -> None:
    """The listing as a rich table (``table``) or plain aligned rows (``plain``)."""
    if fmt == "plain":
        sys.stdout.write(plain(listing))
        return
    from rich.console import Console
    from rich.table import Table

    rich_table = Table(title=listing.title)
    for column in listing.columns:
        rich_table.add_column(column, overflow="fold")
    for row in listing.rows:
        rich_table.add_row(*row)
    Console().print(rich_table)


def plain(listing: Listing) -> str:
    """A header and a line per row, columns two spaces apart, nothing cut; a title, if
    any, on a line of its own before them."""
    rows = [list(listing.columns), *[list(row) for row in listing.rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(listing.columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    title = [f"{listing.title}:"] if listing.title else []
    return "\n".join([*title, *lines]) + "\n"


def show(value: Any, listings: Sequence[Listing], fmt: Format, quiet: bool = False) -> None:
    """A listing command's output: the data as JSON/YAML, the ids, or the tables."""
    if data(value, fmt):
        return
    for listing in listings:
        if quiet:
            ids(listing)
        else:
            table(listing, fmt)
