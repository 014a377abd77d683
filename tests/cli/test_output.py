"""What listing and show commands print into a pipe: whole rows, JSON, YAML, ids."""

from __future__ import annotations

import json

import pytest
import yaml

from llmos.cli.output import Listing, chosen, plain
from tests.cli.test_cli import llmos
from tests.conftest import RunningServer

MODEL = "gemma-3-270m"


def test_plain_rows_are_whole_and_aligned() -> None:
    listing = Listing(("NAME", "DIGEST"), title="files")
    digest = "sha256:" + "ab" * 32
    listing.add("acme/a-rather-long-model-name@12", digest)
    listing.add("b", "-")
    lines = plain(listing).splitlines()
    assert lines[0] == "files:"
    assert lines[2].split() == ["acme/a-rather-long-model-name@12", digest]
    assert lines[1].index("DIGEST") == lines[2].index("sha256:")  # columns aligned


def test_the_default_follows_where_stdout_goes() -> None:
    assert chosen(None) == "plain"  # (pytest captures stdout: not a terminal)
    assert chosen("yaml") == "yaml" and chosen(None, as_json=True) == "json"


@pytest.mark.parametrize("command", [
    ("models", "ls"), ("deployments", "ls"), ("nodes", "ls"), ("workers", "ls"), ("events",),
    ("models", "show", MODEL), ("deployments", "show", MODEL), ("ps",), ("logs",),
])
def test_every_listing_and_show_speaks_json_and_yaml(llmos_server: RunningServer,
                                                     command: tuple[str, ...]) -> None:
    url = ("--url", llmos_server.url)
    as_json = llmos(*command, "-o", "json", *url)
    assert as_json.returncode == 0, as_json.stderr
    value = json.loads(as_json.stdout)
    assert value and json.loads(llmos(*command, "--json", *url).stdout).__class__ is \
        value.__class__
    as_yaml = llmos(*command, "-o", "yaml", *url)
    assert yaml.safe_load(as_yaml.stdout).__class__ is value.__class__


def test_listings_in_a_pipe_keep_whole_names_and_digests(llmos_server: RunningServer) -> None:
    url = ("--url", llmos_server.url)
    versions = json.loads(llmos("models", "ls", "-o", "json", *url).stdout)
    refs = [v["ref"] for v in versions]
    rows = llmos("models", "ls", *url).stdout.splitlines()
    assert rows[0].split()[0] == "MODEL"
    assert [row.split()[0] for row in rows[1:]] == refs  # the @N included
    assert llmos("models", "ls", "-q", *url).stdout.split() == refs
    shown = json.loads(llmos("models", "show", MODEL, "-o", "json", *url).stdout)
    digests = [b["digest"] for b in shown["version"]["blobs"]]
    text = llmos("models", "show", MODEL, *url).stdout
    assert digests and all(d in text for d in digests)  # all 64 hex digits
    workers = llmos("workers", "ls", "-q", *url).stdout.split()
    assert workers == [w["id"] for w in json.loads(
        llmos("workers", "ls", "-o", "json", *url).stdout)]


def test_an_unknown_format_is_refused() -> None:
    result = llmos("models", "ls", "-o", "xml", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "xml" in result.stderr
