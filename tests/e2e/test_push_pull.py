"""`llmos models push/pull` between two real servers: resumable, verified, deduplicated."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmos.cli.transfer import TransferError, copy_version
from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, start_server, stop_server
from tests.registry.test_gguf import make_gguf


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer,
                                                                        RunningServer]]:
    started: list[RunningServer] = []
    try:
        for name in ("site-a", "site-b"):  # registries only: no replicas
            # (ready once the default model is imported: the test copies it between them)
            started.append(start_server(tmp_path_factory.mktemp(name), args=["--no-worker"],
                                        ready_path="/api/models/gemma-3-270m"))
        yield started[0], started[1]
    finally:
        for server in started:
            stop_server(server)


def make_model(tmp_path: Path, size: int, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(make_gguf() + os.urandom(size))
    return path


def versions(server: RunningServer) -> list[str]:
    return [v["ref"] for v in httpx.get(f"{server.url}/api/models").json()["data"]]


def test_push_then_pull_and_nothing_twice(servers: tuple[RunningServer, RunningServer],
                                          tmp_path: Path) -> None:
    a, b = servers
    source = make_model(tmp_path, 1 << 20)
    assert llmos("models", "import", str(source), "--name", "acme/tiny", "--tag", "prod",
                 "--label", "v1", "--url", a.url).returncode == 0
    pushed = llmos("models", "push", "acme/tiny:prod", "--to", b.url, "--url", a.url)
    assert pushed.returncode == 0, pushed.stderr
    assert "as acme/tiny@1" in pushed.stdout and "0 of 1 blobs there already" in pushed.stdout
    copy = httpx.get(f"{b.url}/api/models/acme/tiny:prod").json()
    assert copy["label"] == "v1" and copy["blobs"][0]["filename"] == "m.gguf"
    assert httpx.get(f"{b.url}/api/blobs/{copy['blobs'][0]['digest']}").content == (
        source.read_bytes())
    again = llmos("models", "push", "acme/tiny:prod", "--to", b.url, "--url", a.url)
    assert "sent 0 B, 1 of 1 blobs there already" in again.stdout, again.stdout
    # The default model is in both: copying it sends no blob bytes either.
    same = llmos("models", "pull", "gemma-3-270m", "--from", a.url, "--url", b.url)
    assert "sent 0 B" in same.stdout, same.stderr

    only_b = make_model(tmp_path, 1000, "b.gguf")
    llmos("models", "import", str(only_b), "--name", "from-b", "--url", b.url)
    pulled = llmos("models", "pull", "from-b", "--from", b.url, "--url", a.url)
    assert pulled.returncode == 0 and "as from-b@1" in pulled.stdout, pulled.stderr
    assert "from-b@1" in versions(a)


def test_a_copy_cut_halfway_shows_nothing_and_resumes(
        servers: tuple[RunningServer, RunningServer], tmp_path: Path) -> None:
    a, b = servers
    source = make_model(tmp_path, 48 << 20)
    size = source.stat().st_size
    llmos("models", "import", str(source), "--name", "big", "--url", a.url, timeout=120)

    class Cut(Exception):
        pass

    def cut_at_half(filename: str, done: int, total: int) -> None:
        if done >= total // 2 and done < total:
            raise Cut()

    with httpx.Client(base_url=a.url, timeout=60) as src, \
            httpx.Client(base_url=b.url, timeout=60) as dst:
        with pytest.raises(Cut):
            copy_version(src, dst, "big", progress=cut_at_half)
        assert "big@1" not in versions(b)  # a half-copied version is never visible
        digest = httpx.get(f"{a.url}/api/models/big").json()["blobs"][0]["digest"]
        assert httpx.head(f"{b.url}/api/blobs/{digest}").status_code == 404
        resumed = copy_version(src, dst, "big")
    assert resumed.resumed_from >= size // 2 - (16 << 20)
    assert resumed.sent_bytes == size - resumed.resumed_from
    print(f"cut at 50%: the target kept {resumed.resumed_from} of {size} bytes; "
          f"the resumed copy sent {resumed.sent_bytes}")
    assert "big@1" in versions(b)
    assert httpx.get(f"{b.url}/api/blobs/{digest}").content == source.read_bytes()


def test_a_corrupt_source_blob_is_refused_and_nothing_kept(
        servers: tuple[RunningServer, RunningServer], tmp_path: Path) -> None:
    a, b = servers
    source = make_model(tmp_path, 4 << 20)
    llmos("models", "import", str(source), "--name", "rotten", "--url", a.url)
    digest = httpx.get(f"{a.url}/api/models/rotten").json()["blobs"][0]["digest"]
    blob = a.home / "models" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = llmos("models", "pull", "rotten", "--from", a.url, "--url", b.url)
    assert result.returncode == 1 and "corrupt" in result.stderr, result.stderr
    assert "rotten@1" not in versions(b)
    assert httpx.head(f"{b.url}/api/blobs/{digest}").status_code == 404
    with httpx.Client(base_url=a.url) as src, httpx.Client(base_url=b.url) as dst, \
            pytest.raises(TransferError, match="corrupt"):
        copy_version(src, dst, "rotten")


def test_an_unknown_server_is_one_clear_line(tmp_path: Path) -> None:
    from tests.conftest import free_port

    result = llmos("models", "pull", "x", "--from", f"http://127.0.0.1:{free_port()}",
                   "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "cannot reach 127.0.0.1" in result.stderr


def test_lineage_is_matched_by_content_not_number(
        servers: tuple[RunningServer, RunningServer], tmp_path: Path) -> None:
    a, b = servers
    llmos("models", "import", str(make_model(tmp_path, 100, "other.gguf")), "--name", "base",
          "--url", b.url)  # b's base@1 is some other model
    llmos("models", "import", str(make_model(tmp_path, 100, "base.gguf")), "--name", "base",
          "--url", a.url)
    llmos("models", "import", str(make_model(tmp_path, 100, "child.gguf")), "--name", "child",
          "--derived-from", "base@1", "--relation", "fine-tune", "--url", a.url)
    with httpx.Client(base_url=a.url) as src, httpx.Client(base_url=b.url) as dst:
        orphan = copy_version(src, dst, "child")  # b lacks a's base: the lineage ends
        assert orphan.version["derived_from"] is None
        based = copy_version(src, dst, "base@1")
        assert based.version["ref"] == "base@2"
        httpx.delete(f"{b.url}/api/models/child@1")
        child = copy_version(src, dst, "child")
    assert child.version["derived_from"] == "base@2"
    assert child.version["relation"] == "fine-tune"
