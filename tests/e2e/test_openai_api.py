"""The OpenAI-compatible API of a real `llmos serve`, driven by the official openai client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningServer

MODEL = "gemma-3-270m"
COUNTING = "Numbers: 1, 2, 3, 4, 5, 6,"


@pytest.fixture(scope="module")
def client(llmos_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llmos_server.api, api_key="unused", max_retries=0)


def test_lists_the_default_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8,
        temperature=0)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


MARKERS = ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|im_")
END_OF_TURN = "106"  # Gemma's <end_of_turn> token id
START_OF_TURN = "105"


def test_chat_is_in_gemma_s_format_and_no_marker_reaches_the_answer(
        client: openai.OpenAI, llmos_server: RunningServer) -> None:
    """The default GGUF has no chat template: it is served with the built-in one of its
    family, not llama.cpp's ChatML fallback (whose markers Gemma writes back as text)."""
    info = httpx.get(f"{llmos_server.url}/api/models/{MODEL}", timeout=10).json()
    assert info["chat_template"]["source"] == "family"
    assert info["chat_template"]["name"] == "gemma"
    hi = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0)
    # <bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n: 10 tokens, the
    # markers single special tokens (ChatML's would be plain text, about twice as many)
    assert hi.usage is not None and hi.usage.prompt_tokens == 10
    for prompt in ("Say hello", "What is the capital of France?", COUNTING):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": prompt}],
            max_tokens=24, temperature=0)
        content = answer.choices[0].message.content or ""
        assert not [m for m in MARKERS if m in content], content
    # the end-of-turn token ends the answer (and is not in it); other markers the model
    # is pushed to write are special tokens, never text
    ended = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
        temperature=0, logit_bias={END_OF_TURN: 100})
    assert ended.choices[0].finish_reason == "stop"
    assert ended.choices[0].message.content in ("", None)
    assert ended.usage is not None and ended.usage.completion_tokens == 1
    pushed = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0, logit_bias={START_OF_TURN: 100})
    assert not [m for m in MARKERS if m in (pushed.choices[0].message.content or "")]


def test_n_choices_each_its_own_generation(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=1.0, seed=7, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.finish_reason in {"stop", "length"} for c in answer.choices)
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 10  # the prompt, counted once
    assert 3 <= answer.usage.completion_tokens <= 12  # every choice's tokens
    texts: dict[int, list[str]] = {}
    finished: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=4,
                                           temperature=0, n=2, stream=True,
                                           stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts.setdefault(choice.index, []).append(choice.text)
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert sorted(finished) == [0, 1]
    assert all("".join(texts[i]) for i in (0, 1))
    assert usage is not None and usage.completion_tokens == 8
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, n=9)
    body: Any = info.value.body
    assert (body["code"], body["param"]) == ("limit_exceeded", "n")


def test_logprobs_in_openai_s_shapes_streamed_and_not(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        temperature=0, logprobs=True, top_logprobs=3)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        # greedy: the chosen token is the most likely one (or tied with it)
        assert token.logprob >= max(t.logprob for t in token.top_logprobs) - 1e-6
    streamed = []
    for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
            temperature=0, logprobs=True, top_logprobs=3, stream=True):
        for c in chunk.choices:
            if c.logprobs is not None and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in tokens], abs=1e-3)

    plain = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=3,
                                      temperature=0, logprobs=2)
    lp = plain.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == plain.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    parts = [c.choices[0].logprobs for c in client.completions.create(
        model=MODEL, prompt=COUNTING, max_tokens=3, temperature=0, logprobs=2, stream=True)
        if c.choices and c.choices[0].logprobs is not None]
    assert [t for p in parts for t in p.tokens or []] == lp.tokens
    assert [o for p in parts for o in p.text_offset or []] == lp.text_offset
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=1, top_logprobs=2)


def test_chat_streaming_first_chunk_arrives_early(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    first_content: float | None = None
    parts: list[str] = []
    usage = None
    finish = None
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": COUNTING}], max_tokens=16,
        temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first_content = first_content or time.perf_counter()
                parts.append(choice.delta.content)
            finish = choice.finish_reason or finish
    ended = time.perf_counter()
    assert len(parts) >= 4
    assert first_content is not None
    assert first_content - started < 0.6 * (ended - started)
    assert finish in {"stop", "length"}
    assert usage is not None and usage.completion_tokens == len(parts)


def test_completion_plain_and_streaming_agree(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=8,
                                      temperature=0)
    assert plain.object == "text_completion"
    assert plain.usage is not None and plain.usage.completion_tokens == 8
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt=COUNTING, max_tokens=8, temperature=0, stream=True)
        if c.choices)
    assert streamed == plain.choices[0].text
    assert "7" in plain.choices[0].text


def test_sampling_parameters_are_honoured(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        answer = client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=1.0,
            top_p=0.95, seed=seed, presence_penalty=0.1, frequency_penalty=0.1,
            extra_body={"top_k": 40, "min_p": 0.05})
        return answer.choices[0].text

    assert sample(7) == sample(7)
    stopped = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=16,
                                        temperature=0, stop=[" 9"])
    assert "9" not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=16, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"yes": {"type": "boolean"}},
            "required": ["yes"], "additionalProperties": False}}})
    data = json.loads(answer.choices[0].message.content or "")
    assert isinstance(data["yes"], bool)


def test_sixteen_concurrent_requests_fill_sixteen_slots(llmos_server: RunningServer) -> None:
    async def run() -> tuple[list[str], float]:
        client = openai.AsyncOpenAI(base_url=llmos_server.api, api_key="unused",
                                    max_retries=0)
        peak = 0.0
        done = False

        async def watch() -> None:
            nonlocal peak
            async with httpx.AsyncClient() as http:
                while not done:
                    text = (await http.get(f"{llmos_server.url}/metrics")).text
                    busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith("llmos_worker_busy_slots{"))
                    peak = max(peak, busy)
                    await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        answers = await asyncio.gather(*[
            client.completions.create(model=MODEL, prompt=f"{COUNTING} request {i}:",
                                      max_tokens=16, temperature=0)
            for i in range(16)])
        done = True
        await watcher
        await client.close()
        return [a.choices[0].text for a in answers], peak

    texts, peak = asyncio.run(run())
    assert len(texts) == 16 and all(texts)
    assert peak >= 8, f"only {peak} slots were busy at once"


def _wait_for_idle(server: RunningServer, within_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < within_s:
        if server.metric("llmos_worker_busy_slots") == 0:
            return time.perf_counter() - started
        time.sleep(0.02)
    raise AssertionError(f"slots still busy {within_s}s after the client left")


def test_stream_disconnect_frees_the_slot(llmos_server: RunningServer) -> None:
    cancelled_before = llmos_server.metric("llmos_worker_requests_total",
                                           outcome="cancelled")
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{llmos_server.api}/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # held: abandoning it would close the connection early
        assert next(line for line in lines if line.startswith("data: "))
        assert llmos_server.metric("llmos_worker_busy_slots") >= 1
    # 200 tokens take several seconds; a freed slot is idle well before that.
    assert _wait_for_idle(llmos_server, within_s=2.0) < 2.0
    cancelled = llmos_server.metric("llmos_worker_requests_total", outcome="cancelled")
    assert cancelled == cancelled_before + 1


def test_a_client_that_leaves_a_stream_of_n_choices_frees_every_slot(
        llmos_server: RunningServer) -> None:
    cancelled_before = llmos_server.metric("llmos_worker_requests_total",
                                           outcome="cancelled")
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 200, "stream": True, "n": 2}
    with httpx.stream("POST", f"{llmos_server.api}/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    assert _wait_for_idle(llmos_server, within_s=2.0) < 2.0
    cancelled = llmos_server.metric("llmos_worker_requests_total", outcome="cancelled")
    assert cancelled == cancelled_before + 2


def test_non_streaming_disconnect_frees_the_slot(llmos_server: RunningServer) -> None:
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 200}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{llmos_server.api}/completions", json=body, timeout=0.5)
    assert _wait_for_idle(llmos_server, within_s=2.0) < 2.0


@pytest.mark.parametrize("tier", ["priority", "flex", "auto"])
def test_each_service_tier_is_served(client: openai.OpenAI, tier: str) -> None:
    answer = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=2,
                                       temperature=0, extra_body={"service_tier": tier})
    assert answer.usage is not None and answer.usage.completion_tokens == 2


def test_an_unknown_service_tier_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1,
                                  extra_body={"service_tier": "gold"})
    assert "service_tier" in str(info.value)


def test_echo_puts_the_prompt_before_the_completion(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=4,
                                      temperature=0)
    echoed = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=4,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == COUNTING + plain.choices[0].text
    streamed = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=4,
                                         temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text


def test_a_model_is_retrieved_by_its_id(client: openai.OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object) == (MODEL, "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
