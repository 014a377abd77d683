"""`llmos models …` against a real server, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import llmos
from tests.conftest import RunningServer
from tests.model import gemma_path
from tests.registry.test_gguf import make_gguf


def test_the_model_lifecycle(llmos_server: RunningServer, tmp_path: Path) -> None:
    url = ["--url", llmos_server.url]
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny-q4.gguf").write_bytes(make_gguf() + b"cli")
    (folder / "README.md").write_text("# tiny\n")
    done = llmos("models", "import", str(folder), "--name", "acme/tiny", "--label", "first",
                 *url)
    assert done.returncode == 0, done.stderr
    assert "imported acme/tiny@1" in done.stdout
    again = llmos("models", "import", str(folder), "--name", "acme/tiny", *url)
    assert "unchanged" in again.stdout and "acme/tiny@1" in again.stdout

    (tmp_path / "child.gguf").write_bytes(make_gguf(file_type=7) + b"q8")  # Q8_0
    child = llmos("models", "import", str(tmp_path / "child.gguf"), "--name", "acme/tiny",
                  "--derived-from", "acme/tiny@1", "--tag", "staging", *url)
    assert child.returncode == 0 and "acme/tiny@2" in child.stdout, child.stderr

    listed = llmos("models", "ls", *url)
    assert listed.returncode == 0
    assert "acme/tiny" in listed.stdout and "gemma-3-270m" in listed.stdout

    shown = llmos("models", "show", "acme/tiny:staging", "--json", *url)
    data = json.loads(shown.stdout)
    assert data["version"]["derived_from"] == "acme/tiny@1"
    assert data["version"]["relation"] == "quantization"
    assert [a["ref"] for a in data["ancestors"]] == ["acme/tiny@1"]
    human = llmos("models", "show", "acme/tiny@1", *url)
    assert "README.md" in human.stdout and "descendants: acme/tiny@2" in human.stdout

    assert llmos("models", "tag", "acme/tiny@2", "prod", *url).returncode == 0
    assert "prod" in json.loads(llmos("models", "show", "acme/tiny@2", "--json",
                                      *url).stdout)["version"]["tags"]
    assert llmos("models", "untag", "acme/tiny:prod", *url).returncode == 0
    gone = llmos("models", "show", "acme/tiny:prod", *url)
    assert gone.returncode == 1 and "not found" in gone.stderr

    assert llmos("models", "verify", "acme/tiny@1", *url).returncode == 0
    removed = llmos("models", "rm", "acme/tiny@2", *url)
    assert removed.returncode == 0 and "deleted acme/tiny@2" in removed.stdout
    gc = llmos("models", "gc", "--grace-s", "0", *url)
    assert gc.returncode == 0 and "removed 1 blobs" in gc.stdout
    assert llmos("models", "rm", "acme/tiny@1", *url).returncode == 0


def test_show_gives_the_default_model_its_estimate(llmos_server: RunningServer) -> None:
    url = ["--url", llmos_server.url]
    data = json.loads(llmos("models", "show", "gemma-3-270m", "--json", *url).stdout)
    version = data["version"]
    assert version["metadata"]["swa_layers"] == 15
    assert version["estimate"]["weights_bytes"] > 200 * 2**20
    human = llmos("models", "show", "gemma-3-270m", "--slots", "2", "--ctx-size", "2048", *url)
    assert human.returncode == 0, human.stderr
    assert "memory of one replica (slots=2, ctx_size=2048" in human.stdout


def test_the_default_model_cannot_be_deleted_while_deployed(
        llmos_server: RunningServer) -> None:
    refused = llmos("models", "rm", "gemma-3-270m", "--url", llmos_server.url)
    assert refused.returncode == 1
    assert "in use by deployment 'gemma-3-270m'" in refused.stderr


def test_reimporting_the_default_model_stores_nothing(
        llmos_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = llmos("models", "import", str(gemma_path(tmp_path_factory)),
                   "--name", "gemma-3-270m", "--url", llmos_server.url, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "unchanged" in result.stdout and "gemma-3-270m@1" in result.stdout
    assert "0 B sent" in result.stdout  # hashed here, found there: no upload


def test_a_corrupt_file_is_refused_before_upload(llmos_server: RunningServer,
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(make_gguf()[:100])
    result = llmos("models", "import", str(bad), "--name", "bad", "--url", llmos_server.url)
    assert result.returncode == 2 and "bad.gguf" in result.stderr
    shown = llmos("models", "show", "bad", "--url", llmos_server.url)
    assert shown.returncode == 1


def test_models_commands_without_a_server(tmp_path: Path) -> None:
    from tests.conftest import free_port

    result = llmos("models", "ls", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "No LLMOS server answers" in result.stderr


def test_import_into_a_home_without_a_server(tmp_path: Path) -> None:
    from llmos.registry.local import LocalRegistry

    source = tmp_path / "w.gguf"
    source.write_bytes(make_gguf())
    result = llmos("models", "import", str(source), "--name", "local/w", "--tag", "prod",
                   "--home", str(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    assert "imported local/w@1" in result.stdout
    version = LocalRegistry(tmp_path / "home" / "models").catalog.get("local/w:prod")
    assert version.tags == ("latest", "prod") and version.creator


def test_import_a_hugging_face_cache_entry(llmos_server: RunningServer, tmp_path: Path) -> None:
    from tests.registry.test_local import hugging_face_entry

    entry = hugging_face_entry(tmp_path)
    result = llmos("models", "import", str(entry), "--name", "hf/tiny", "--include",
                   "*Q8_0.gguf", "--url", llmos_server.url)
    assert result.returncode == 0, result.stderr
    shown = json.loads(llmos("models", "show", "hf/tiny", "--json", "--url",
                             llmos_server.url).stdout)["version"]
    assert shown["label"] == "huggingface acme/tiny-GGUF @ 0123456789ab"
    assert {b["filename"] for b in shown["blobs"]} == {"README.md", "config.json",
                                                      "tiny-Q8_0.gguf"}
