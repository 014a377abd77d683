"""The registry on local disk: versions, tags, lineage, blobs, and what it refuses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.errors import BadRequest, Conflict, NotFound
from llmos.registry import upkeep
from llmos.registry.blobs import StorageFull
from llmos.registry.gguf import GGUFError, read_gguf
from llmos.registry.lineage import lineage
from llmos.registry.local import LocalRegistry
from llmos.registry.manifest import (
    ADAPTER_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    README_MEDIA_TYPE,
    TOKENIZER_MEDIA_TYPE,
)
from llmos.registry.metadata import describe
from llmos.registry.refs import parse_ref
from tests.model import gemma_path
from tests.registry.test_gguf import make_gguf, string_entry


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "store")


def weights(tmp_path: Path, variant: bytes = b"", name: str = "model.gguf",
            **kwargs: object) -> Path:
    """A small valid GGUF; ``variant`` (appended after the tensor data) makes it unique."""
    path = tmp_path / name
    path.write_bytes(make_gguf(**kwargs) + variant)  # type: ignore[arg-type]
    return path


def store_files(registry: LocalRegistry) -> list[Path]:
    return sorted(p for p in registry.root.rglob("*")
                  if p.is_file() and "locks" not in p.parts)


def test_import_versions_and_tags(registry: LocalRegistry, tmp_path: Path) -> None:
    v1 = registry.import_path(weights(tmp_path, b"one"), "acme/tiny").version
    v2 = registry.import_path(weights(tmp_path, b"two"), "acme/tiny", tag="staging").version
    assert (v1.version, v2.version) == (1, 2)
    assert registry.catalog.get("acme/tiny").version == 1  # latest still names 1
    assert registry.catalog.get("acme/tiny:staging").version == 2
    assert registry.catalog.get("acme/tiny@2").blobs[0].digest == v2.blobs[0].digest
    assert registry.catalog.get(f"acme/tiny@{v1.blobs[0].digest}").version == 1
    assert [v.ref for v in registry.catalog.list()] == ["acme/tiny@1", "acme/tiny@2"]
    assert registry.catalog.tags("acme/tiny") == {"latest": 1, "staging": 2}
    # A repository and the namespace of another can share a name.
    registry.import_path(weights(tmp_path, b"three"), "acme")
    assert [v.ref for v in registry.catalog.list()] == ["acme@1", "acme/tiny@1", "acme/tiny@2"]


def test_a_version_keeps_what_its_gguf_says(registry: LocalRegistry, tmp_path: Path) -> None:
    version = registry.import_path(weights(tmp_path), "m", label="first",
                                   creator="ana").version
    assert version.metadata["architecture"] == "gemma3"
    assert version.metadata["quantization"] == "Q4_K_M"
    assert version.metadata["context_length"] == 32768
    assert version.metadata["parameter_count"] == 3 * 64 * 32
    assert version.metadata["chat_template_sha256"].startswith("sha256:")
    assert (version.label, version.creator) == ("first", "ana")
    assert version.blobs[0].media_type == GGUF_MEDIA_TYPE
    again = registry.catalog.get("m@1")  # read back from the manifest on disk
    assert again == version


def test_the_real_model_metadata(tmp_path_factory: pytest.TempPathFactory) -> None:
    facts = describe([read_gguf(gemma_path(tmp_path_factory))])
    assert facts["architecture"] == "gemma3"
    assert facts["block_count"] == 18
    assert facts["head_count_kv"] == 1
    assert facts["sliding_window"] == 512
    assert facts["swa_layers"] == 15  # five of every six layers
    assert facts["embedding_length"] == 640
    assert facts["vocab_size"] == 262144
    assert facts["quantization"] == "Q4_K_M"
    assert 260e6 < facts["parameter_count"] < 280e6


def test_same_content_is_one_blob_and_one_version(registry: LocalRegistry,
                                                  tmp_path: Path) -> None:
    first = registry.import_path(weights(tmp_path, name="a.gguf"), "m")
    (tmp_path / "b").mkdir()
    second = registry.import_path(weights(tmp_path / "b", name="a.gguf"), "m")
    assert first.created and not second.created
    assert first.new_bytes > 0 and second.new_bytes == 0
    assert first.version.version == second.version.version == 1
    assert len(list((registry.root / "blobs" / "sha256").iterdir())) == 1
    assert not list(registry.root.glob("**/*.part"))


def test_materialized_files_keep_their_names(registry: LocalRegistry, tmp_path: Path) -> None:
    version = registry.import_path(weights(tmp_path, name="w-q4.gguf"), "m").version
    path = registry.files.weights_path(version)
    assert path.name == "w-q4.gguf"
    assert path.read_bytes() == (tmp_path / "w-q4.gguf").read_bytes()
    assert os.stat(path).st_ino == os.stat(registry.files.blob_path(version.blobs[0].digest)).st_ino


def test_move_import_consumes_the_file(registry: LocalRegistry, tmp_path: Path) -> None:
    source = weights(tmp_path)
    registry.import_path(source, "m", move=True)
    assert not source.exists()


def test_a_folder_is_one_version_with_typed_files(registry: LocalRegistry,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    weights(folder, name="model-q4.gguf")
    (folder / "README.md").write_text("# tiny\n")
    (folder / "LICENSE").write_text("Apache-2.0\n")
    (folder / "tokenizer.json").write_text("{}")
    (folder / ".hidden").write_text("not imported")
    version = registry.import_path(folder, "m").version
    assert {b.filename: b.media_type for b in version.blobs} == {
        "LICENSE": LICENSE_MEDIA_TYPE, "README.md": README_MEDIA_TYPE,
        "model-q4.gguf": GGUF_MEDIA_TYPE, "tokenizer.json": TOKENIZER_MEDIA_TYPE}
    assert registry.files.weights_path(version).name == "model-q4.gguf"


def test_split_gguf_parts_come_together(registry: LocalRegistry, tmp_path: Path) -> None:
    for i in (1, 2, 3):
        weights(tmp_path, bytes([i]), name=f"big-{i:05d}-of-00003.gguf")
    version = registry.import_path(tmp_path / "big-00001-of-00003.gguf", "big").version
    assert [b.filename for b in version.blobs] == [
        "big-00001-of-00003.gguf", "big-00002-of-00003.gguf", "big-00003-of-00003.gguf"]
    assert version.metadata["parameter_count"] == 3 * 3 * 64 * 32  # every part's tensors
    assert registry.files.weights_path(version).name == "big-00001-of-00003.gguf"
    (tmp_path / "big-00002-of-00003.gguf").unlink()
    with pytest.raises(BadRequest, match=r"missing big-00002-of-00003\.gguf"):
        registry.import_path(tmp_path / "big-00001-of-00003.gguf", "big2")


def test_lineage(registry: LocalRegistry, tmp_path: Path) -> None:
    base = registry.import_path(weights(tmp_path, file_type=1), "base").version  # F16
    quant = registry.import_path(weights(tmp_path, file_type=15), "base-q4",
                                 derived_from="base@1").version
    adapter = registry.import_path(
        weights(tmp_path, extra=(string_entry("general.type", "adapter"),), name="a.gguf"),
        "base-q4-chat", derived_from="base-q4").version
    tuned = registry.import_path(weights(tmp_path, b"tuned"), "base-tuned",
                                 derived_from="base", relation="fine-tune").version
    assert quant.derived_from == "base@1" and quant.relation == "quantization"
    assert adapter.blobs[0].media_type == ADAPTER_MEDIA_TYPE
    assert adapter.derived_from == "base-q4@1" and adapter.relation == "adapter"
    assert tuned.relation == "fine-tune"
    ancestors, descendants = lineage(registry, "base-q4-chat")
    assert [v.ref for v in ancestors] == ["base-q4@1", "base@1"]
    ancestors, descendants = lineage(registry, "base")
    assert ancestors == []
    assert {v.ref for v in descendants} == {"base-q4@1", "base-q4-chat@1", "base-tuned@1"}
    assert base.derived_from is None
    with pytest.raises(BadRequest, match="derived_from"):
        registry.import_path(weights(tmp_path, b"x"), "orphan", derived_from="nothing@1")
    with pytest.raises(BadRequest, match="relation"):
        registry.import_path(weights(tmp_path, b"y"), "odd", derived_from="base",
                             relation="cousin")


def test_tag_untag_and_delete(registry: LocalRegistry, tmp_path: Path) -> None:
    registry.import_path(weights(tmp_path, b"one"), "m")
    registry.import_path(weights(tmp_path, b"two"), "m", tag="staging")
    assert registry.tag("m@2", "prod").tags == ("prod", "staging")
    assert registry.tag("m:staging", "latest").tags == ("latest", "prod", "staging")
    assert registry.untag("m:staging").tags == ("latest", "prod")
    with pytest.raises(NotFound):
        registry.catalog.get("m:staging")
    with pytest.raises(BadRequest):
        registry.untag("m@2")
    gone = registry.delete("m:prod")
    assert gone.version == 2
    assert registry.catalog.tags("m") == {}
    with pytest.raises(NotFound, match="it has versions 1"):
        registry.catalog.get("m")
    assert [v.ref for v in registry.catalog.list()] == ["m@1"]
    registry.delete("m@1")
    assert registry.catalog.list() == []
    # Numbers are never reused: a new version is not mistaken for a deleted one.
    assert registry.import_path(weights(tmp_path, b"three"), "m").version.version == 3


def test_gc_removes_only_what_no_version_names(registry: LocalRegistry, tmp_path: Path) -> None:
    kept = registry.import_path(weights(tmp_path, b"kept"), "kept").version
    registry.import_path(weights(tmp_path, b"gone"), "gone")
    registry.files.materialize(registry.catalog.get("gone"))
    registry.delete("gone@1")
    stray = registry.root / "files" / "default" / "gone" / "_versions" / "7"
    stray.mkdir(parents=True)  # say, left by a version deleted while a replica used it
    (stray / "w.gguf").write_bytes(b"x")
    stale = registry.root / "blobs" / "sha256" / ".stale.part"
    stale.write_bytes(b"half an upload")
    first = upkeep.gc(registry)  # the blob is within the grace period: an upload may name it
    assert (first.blobs, first.parts, first.folders) == (0, 1, 1)
    report = upkeep.gc(registry, grace_s=0)
    assert (report.blobs, report.parts) == (1, 0)
    assert report.bytes == len(make_gguf()) + 4
    assert registry.blobs.digests() == [kept.blobs[0].digest]
    assert upkeep.verify(registry) == []


def test_verify_finds_a_flipped_byte(registry: LocalRegistry, tmp_path: Path) -> None:
    version = registry.import_path(weights(tmp_path), "m").version
    assert upkeep.verify(registry, "m") == []
    blob = registry.files.blob_path(version.blobs[0].digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    problems = upkeep.verify(registry)
    assert len(problems) == 1 and problems[0].ref == "default/m@1"
    assert "corrupt" in problems[0].problem
    blob.unlink()
    assert "missing" in upkeep.verify(registry, "m@1")[0].problem


@pytest.mark.parametrize("content", [
    b"", b"GGUF", b"NOPE" + b"\0" * 64, make_gguf()[:200], make_gguf()[:-2050]],
    ids=["empty", "magic-only", "bad-magic", "truncated-header", "truncated-data"])
def test_a_corrupt_gguf_changes_nothing(registry: LocalRegistry, tmp_path: Path,
                                        content: bytes) -> None:
    registry.import_path(weights(tmp_path, b"good", name="good.gguf"), "good")
    before = store_files(registry)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(GGUFError):
        registry.import_path(bad, "bad")
    assert store_files(registry) == before
    with pytest.raises(GGUFError):
        registry.put_blob(iter([content]), filename="bad.gguf")
    assert store_files(registry) == before


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "Upper", "a/b/c", "a/../b", "",
                                  "-dash", "a%2F..%2Fb", "..", "a/.."])
def test_bad_names_are_refused(registry: LocalRegistry, tmp_path: Path, name: str) -> None:
    with pytest.raises(BadRequest):
        registry.import_path(weights(tmp_path), name)
    assert store_files(registry) == []


@pytest.mark.parametrize("ref", ["m@sha256:../../etc", "m@abc", "m:../x", "M:latest",
                                 "m@sha256:" + "A" * 64, "m:%2e%2e", "/abs:tag"])
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(BadRequest):
        parse_ref(ref)


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "../../x", "sha256:" + "0" * 63,
                                    "sha256:" + "0" * 64 + "/x"])
def test_bad_digests_are_refused(registry: LocalRegistry, digest: str) -> None:
    with pytest.raises(BadRequest):
        registry.files.blob_path(digest)
    with pytest.raises(BadRequest):
        registry.create_version("m", [("w.gguf", digest)])


@pytest.mark.parametrize("filename", ["../w.gguf", "/etc/passwd", "a/b.gguf", ".hidden", ".."])
def test_bad_filenames_are_refused(registry: LocalRegistry, filename: str) -> None:
    with pytest.raises(BadRequest):
        registry.put_blob(iter([b"x"]), filename=filename)
    assert store_files(registry) == []


def test_unknown_model_is_not_found(registry: LocalRegistry) -> None:
    with pytest.raises(NotFound):
        registry.catalog.get("nothing")


def test_two_imports_at_once(registry: LocalRegistry, tmp_path: Path) -> None:
    same = [weights(tmp_path / str(i), name="w.gguf") for i in range(4)
            if not (tmp_path / str(i)).mkdir()]
    other = [weights(tmp_path, bytes([i]), name=f"o{i}.gguf") for i in range(4)]
    results: list[object] = []

    def run(path: Path, name: str) -> None:
        try:
            results.append(registry.import_path(path, name).version.ref)
        except Exception as exc:  # the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=run, args=(p, "same")) for p in same]
    threads += [threading.Thread(target=run, args=(p, "other")) for p in other]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, results)) == ["other@1", "other@2", "other@3", "other@4",
                                         "same@1", "same@1", "same@1", "same@1"]
    assert len(registry.blobs.digests()) == 5
    assert not list(registry.root.glob("**/*.part"))


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real, tiny filesystem (tmpfs), so a write really fails with ENOSPC."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_a_clean_error(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        registry = LocalRegistry(disk / "store")
        registry.import_path(weights(tmp_path, b"fits", name="small.gguf"), "small")
        before = store_files(registry)
        big = weights(tmp_path, os.urandom(2 << 20), name="big.gguf")
        with pytest.raises(StorageFull, match="out of disk space"):
            registry.import_path(big, "big")
        assert store_files(registry) == before
        with pytest.raises(StorageFull):
            registry.put_blob(iter([big.read_bytes()]), filename="big.gguf")
        assert store_files(registry) == before
        assert upkeep.verify(registry) == []


def test_a_new_version_gets_a_resource_estimate(tmp_path: Path) -> None:
    from llmos.registry.estimate import estimator

    registry = LocalRegistry(tmp_path / "store", estimator=estimator(slots=4, ctx_size=1024))
    version = registry.import_path(weights(tmp_path), "m").version
    assert version.estimate is not None
    assert (version.estimate["slots"], version.estimate["ctx_size"]) == (4, 1024)
    assert version.estimate["loaded_bytes"] >= version.estimate["weights_bytes"] > 0
    assert registry.catalog.get("m@1").estimate == version.estimate  # kept in the manifest
    adapter = registry.import_path(
        weights(tmp_path, extra=(string_entry("general.type", "adapter"),), name="a.gguf"),
        "m-adapter", derived_from="m@1").version
    assert adapter.estimate is None  # an adapter alone is not a replica


def hugging_face_entry(tmp_path: Path) -> Path:
    """A hub cache entry as huggingface_hub lays it out: blobs, refs/main, snapshot links."""
    entry = tmp_path / "hub" / "models--acme--tiny-GGUF"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    (entry / "blobs").mkdir()
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    files = {"tiny-Q4_K_M.gguf": make_gguf() + b"q4", "tiny-Q8_0.gguf": make_gguf() + b"q8",
             "README.md": b"# tiny\n", "config.json": b"{}"}
    for name, content in files.items():
        import hashlib

        blob = entry / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (entry / "snapshots" / "old").mkdir()  # another revision, not the one refs/main names
    return entry


def test_import_from_a_hugging_face_cache(registry: LocalRegistry, tmp_path: Path) -> None:
    entry = hugging_face_entry(tmp_path)
    version = registry.import_path(entry, "acme/tiny", include=["*Q4_K_M*.gguf"]).version
    assert [b.filename for b in version.blobs] == ["README.md", "config.json",
                                                   "tiny-Q4_K_M.gguf"]
    assert version.label == "huggingface acme/tiny-GGUF @ 0123456789ab"
    assert registry.files.weights_path(version).read_bytes() == make_gguf() + b"q4"
    with pytest.raises(BadRequest, match="no files match"):
        registry.import_path(entry, "acme/none", include=["*.safetensors"])
    (entry / "refs" / "main").unlink()
    with pytest.raises(BadRequest, match="2 snapshots and no refs/main"):
        registry.import_path(entry, "acme/other")


@pytest.mark.parametrize("bad", ["acme\n", "m:prod\n", "m@sha256:" + "0" * 64 + "\n",
                                 "ns/lineage", "estimate", "a/tags", "x/versions"])
def test_names_with_a_trailing_newline_or_a_reserved_word_are_refused(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_ref(bad)


def test_a_file_name_with_a_trailing_newline_is_refused(registry: LocalRegistry) -> None:
    with pytest.raises(BadRequest):
        registry.put_blob(iter([b"not a gguf"]), filename="m.gguf\n")
    assert registry.blobs.digests() == []


def test_reimporting_an_old_version_does_not_move_latest(registry: LocalRegistry,
                                                         tmp_path: Path) -> None:
    registry.import_path(weights(tmp_path, b"one"), "m")
    registry.import_path(weights(tmp_path, b"two"), "m")
    assert registry.catalog.get("m").version == 2  # a plain import moves latest to the new version
    again = registry.import_path(weights(tmp_path, b"one"), "m")
    assert not again.created and again.version.version == 1
    assert registry.catalog.get("m").version == 2  # … and a re-import of old files moves nothing
    assert registry.import_path(weights(tmp_path, b"one"), "m", tag="old").version.tags == (
        "old",)


def test_gc_keeps_tags_and_files_that_end_in_part(registry: LocalRegistry,
                                                  tmp_path: Path) -> None:
    registry.import_path(weights(tmp_path, b"x", name="notes.part"), "m", tag="v1.part")
    registry.files.materialize(registry.catalog.get("m"))
    (registry.blobs.folder / "abc.partial").write_bytes(b"a cut pull")
    (registry.blobs.folder / ".import.part").write_bytes(b"a cut import")
    report = upkeep.gc(registry, grace_s=0)
    assert report.parts == 2 and report.blobs == 0
    assert registry.catalog.get("m:v1.part").blobs[0].filename == "notes.part"
    assert (registry.files.materialize(registry.catalog.get("m")) / "notes.part").is_file()
    assert upkeep.verify(registry) == []


def test_a_pinned_version_is_not_deleted_by_any_name(registry: LocalRegistry,
                                                     tmp_path: Path) -> None:
    version = registry.import_path(weights(tmp_path, b"pinned"), "m").version
    registry.pins.pin(version, "deployment 'chat' (project default)")
    registry.untag("m:latest")
    for ref in ("m@1", f"m@{version.blobs[0].digest}"):
        with pytest.raises(Conflict, match="deployment 'chat'"):
            registry.delete(ref)
    assert upkeep.gc(registry, grace_s=0).blobs == 0
    registry.pins.unpin(version, "deployment 'chat' (project default)")
    registry.delete("m@1")
    assert upkeep.gc(registry, grace_s=0).blobs == 1


def test_a_lease_pins_until_it_runs_out(registry: LocalRegistry, tmp_path: Path) -> None:
    version = registry.import_path(weights(tmp_path, b"leased"), "m").version
    registry.pins.pin(version, "worker w1", lease_s=600)
    registry.pins.pin(version, "worker w2", lease_s=-1)  # a worker killed long ago
    assert registry.pins.holders(version) == ["worker w1"]
    with pytest.raises(Conflict):
        registry.delete("m@1")
    registry.pins.pin(version, "worker w1", lease_s=-1)  # (as if its renewals stopped)
    assert registry.pins.holders(version) == []
    registry.delete("m@1")


def test_a_remote_models_spec_is_checked_and_typed(registry: LocalRegistry,
                                                   tmp_path: Path) -> None:
    spec = tmp_path / "remote.json"
    spec.write_text('{"base_url": "https://provider.example/v1/", "model": "big",'
                    ' "api_key_env": "PROVIDER_KEY"}')
    version = registry.import_path(spec, "hosted").version
    assert version.config == {"format": "remote"}
    assert [b.filename for b in version.blobs] == ["remote.json"]
    for bad, says in (('{"base_url": "ftp://x", "model": "m"}', "base_url"),
                      ('{"base_url": "https://u:p@x/v1", "model": "m"}', "credentials"),
                      ('{"base_url": "https://x/v1", "model": "m", "api_key": "sk-1"}',
                       "api_key"),
                      ("not json", "not JSON")):
        spec.write_text(bad)
        with pytest.raises(BadRequest, match=says):
            registry.import_path(spec, "hosted")
    assert len(registry.catalog.versions("hosted")) == 1
