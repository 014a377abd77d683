"""Embeddings through the official client: the default Gemma in llama.cpp's embedding
mode (mean pooling) as a deployment of ``llmos serve``. No GGUF embedding model is
reachable here, so this is a test of the path (gateway, bus, worker, engine, both
encodings, token ids, errors), not of embedding quality; Gemma's mean-pooled states
still put a paraphrase nearer than an unrelated sentence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import RunningServer, start_server, stop_server, wait_until

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
