"""Which chat template a version is served with, and where it comes from (no engine:
llama.cpp renders them; tests/e2e/test_openai_api.py checks the result)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.errors import BadRequest
from llmos.registry.manifest import GGUF_MEDIA_TYPE, TEMPLATE_MEDIA_TYPE, Blob, ModelVersion
from llmos.registry.metadata import media_type
from llmos.registry.templates import BUILTIN, builtin, check_override, choose
from llmos.settings import EngineSettings


def version(architecture: str = "gemma3", *, gguf_template: bool = False,
            template_file: str | None = None) -> ModelVersion:
    blobs = [Blob("sha256:" + "a" * 64, 10, GGUF_MEDIA_TYPE, "m.gguf")]
    if template_file:
        blobs.append(Blob("sha256:" + "b" * 64, 10, TEMPLATE_MEDIA_TYPE, template_file))
    metadata: dict[str, object] = {"architecture": architecture}
    if gguf_template:
        metadata["chat_template_sha256"] = "c" * 64
    return ModelVersion("m", 1, "default", 0.0, tuple(blobs), metadata=metadata)


def test_the_first_source_that_exists_wins(tmp_path: Path) -> None:
    (tmp_path / "chat.jinja").write_text("{{ messages }}")
    stored = choose(version(gguf_template=True, template_file="chat.jinja"), files=tmp_path)
    assert (stored.source, stored.name, stored.text) == ("file", "chat.jinja", "{{ messages }}")
    own = choose(version(gguf_template=True))
    assert (own.source, own.name, own.text) == ("gguf", "gguf", None)  # llama.cpp reads it
    family = choose(version("gemma3"))
    assert (family.source, family.name, family.text) == ("family", "gemma", builtin("gemma"))
    fallback = choose(version("llama"))
    assert (fallback.source, fallback.name) == ("fallback", "chatml")
    assert "ChatML" in fallback.describe()["warning"]
    assert "warning" not in family.describe()
    assert len(family.describe()["sha256"]) == 64


def test_a_deployment_s_template_overrides_the_version_s() -> None:
    named = choose(version(gguf_template=True), "chatml")
    assert (named.source, named.name, named.text) == ("deployment", "chatml",
                                                      builtin("chatml"))
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    custom = choose(version(), jinja)
    assert (custom.source, custom.name, custom.text) == ("deployment", "custom", jinja)


def test_an_unknown_template_name_is_refused_by_name() -> None:
    with pytest.raises(BadRequest) as info:
        check_override("gemma4")
    assert info.value.param == "chat_template"
    assert "chatml, gemma" in info.value.message
    with pytest.raises(ValueError, match="neither a built-in"):
        EngineSettings().overlay({"chat_template": "gemma4"})
    assert EngineSettings().overlay({"chat_template": "gemma"}).chat_template == "gemma"


def test_every_built_in_ships_and_jinja_files_are_templates() -> None:
    for name in BUILTIN:
        assert "{%" in builtin(name)
    assert "<start_of_turn>" in builtin("gemma") and "<end_of_turn>" in builtin("gemma")
    assert media_type("chat_template.jinja", None) == TEMPLATE_MEDIA_TYPE
