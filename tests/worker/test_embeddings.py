"""The worker's gathering of concurrent embedding requests into engine calls (a fake
engine that counts its calls; the real path is tests/e2e/test_embeddings.py)."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llmos.engines.base import Embedded, Engine, EngineConfig, EventCallback, GenerationResult
from llmos.errors import BadRequest
from llmos.worker.embeddings import Gatherer, encoded, inputs_of


class Counting(Engine):
    gathers_embeddings = True

    def __init__(self, fail: bool = False) -> None:
        self.config = EngineConfig(model_path=Path("none"), embedding=True)
        self.batches: list[int] = []
        self.fail = fail

    def embed(self, inputs: Sequence[str | list[int]]) -> Embedded:
        self.batches.append(len(inputs))
        if self.fail:
            raise BadRequest("no")
        counts = tuple(len(i) for i in inputs)
        return Embedded([[float(len(i)), 0.0] for i in inputs], sum(counts), counts)

    def generate(self, kind: str, body: dict[str, object],  # type: ignore[override]
                 on_event: EventCallback) -> GenerationResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


async def together(gatherer: Gatherer, requests: list[list[str | list[int]]]
                   ) -> list[Embedded | BaseException]:
    return await asyncio.gather(*(gatherer.embed(r) for r in requests),
                                return_exceptions=True)


def test_concurrent_requests_share_engine_calls_up_to_the_batch_size() -> None:
    engine = Counting()
    with ThreadPoolExecutor(4) as pool:
        gatherer = Gatherer(pool, engine, max_inputs=8, wait_s=0.05)
        requests: list[list[str | list[int]]] = [["x" * (i + 1)] for i in range(20)]
        requests.append(["ab", "abc"])  # one request of two inputs
        results = asyncio.run(together(gatherer, requests))
    assert sum(engine.batches) == 22 and max(engine.batches) <= 8
    assert len(engine.batches) == 3  # 8 + 8 + 6, not 21 calls
    for i, result in enumerate(results[:20]):
        assert isinstance(result, Embedded)
        assert result.vectors == [[float(i + 1), 0.0]] and result.prompt_tokens == i + 1
    last = results[20]
    assert isinstance(last, Embedded) and last.vectors == [[2.0, 0.0], [3.0, 0.0]]
    assert last.prompt_tokens == 5


def test_a_lone_request_waits_only_the_window() -> None:
    engine = Counting()
    with ThreadPoolExecutor(1) as pool:
        gatherer = Gatherer(pool, engine, max_inputs=32, wait_s=0.01)
        (result,) = asyncio.run(together(gatherer, [["hello"]]))
    assert isinstance(result, Embedded) and engine.batches == [1]


def test_an_engine_error_reaches_every_request_of_the_call() -> None:
    with ThreadPoolExecutor(1) as pool:
        gatherer = Gatherer(pool, Counting(fail=True), max_inputs=4, wait_s=0.01)
        results = asyncio.run(together(gatherer, [["a"], ["b"], ["c"]]))
    assert all(isinstance(r, BadRequest) for r in results)


def test_inputs_and_the_base64_encoding() -> None:
    assert inputs_of({"input": "a"}) == ["a"]
    assert inputs_of({"input": [1, 2]}) == [[1, 2]]
    assert inputs_of({"input": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(BadRequest):
        inputs_of({"input": []})
    raw = base64.b64decode(encoded([0.6, 0.8, 0.0], None))
    assert struct.unpack("<3f", raw) == pytest.approx((0.6, 0.8, 0.0))
    cut = struct.unpack("<2f", base64.b64decode(encoded([0.3, 0.4, 0.866], 2)))
    assert cut == pytest.approx((0.6, 0.8))  # cut and made unit length again
