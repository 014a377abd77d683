"""Every bad input gets OpenAI's error shape, the right status and the field it is about."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningServer

MODEL = "gemma-3-270m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def client(llmos_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llmos_server.api, api_key="unused", max_retries=0)


def post(server: RunningServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.api}{path}", json=body, timeout=60)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def test_malformed_json_is_400(llmos_server: RunningServer) -> None:
    response = httpx.post(f"{llmos_server.api}/chat/completions", content=b'{"model": ',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_json"
    assert "JSON" in error["message"]


@pytest.mark.parametrize(("patch", "param"), [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"frobnicate": True}, "frobnicate"),
])
def test_schema_violation_is_400_naming_the_field(llmos_server: RunningServer,
                                                  patch: dict[str, Any], param: str) -> None:
    response = post(llmos_server, "/chat/completions", CHAT | patch)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param.split(".")[0].split("[")[0] in error["message"]


def test_missing_field_is_400(llmos_server: RunningServer) -> None:
    response = post(llmos_server, "/completions", {"model": MODEL})
    assert response.status_code == 400
    assert error_of(response)["param"] == "prompt"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert "no-such-model" in str(info.value)


@pytest.mark.parametrize(("extra", "param"), [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
])
def test_parameters_the_engine_cannot_honour_are_400(client: openai.OpenAI,
                                                     extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=4, **extra)
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["param"] == param


@pytest.mark.parametrize(("extra", "param"), [
    ({"best_of": 2}, "best_of"), ({"suffix": "end"}, "suffix"),
    ({"echo": True, "logprobs": 1}, "echo"), ({"echo": True, "prompt": [2, 3]}, "echo"),
])
def test_completion_parameters_it_cannot_honour_are_refused_by_name(
        client: openai.OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**{"model": MODEL, "prompt": "x", "max_tokens": 4} | extra)
    body: Any = info.value.body
    assert (body["code"], body["param"]) == ("unsupported_parameter", param)
    # their neutral values are accepted
    client.completions.create(model=MODEL, prompt="x", max_tokens=1, echo=False, best_of=1)


def test_prompt_beyond_the_slot_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hello " * 400, max_tokens=4)
    body: Any = info.value.body
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == "prompt"
    assert "256" in body["message"]


def test_prompt_plus_max_tokens_beyond_the_slot_context_is_400(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, prompt="hello " * 50, max_tokens=240,
                                      stream=stream)
        body: Any = info.value.body
        assert body["code"] == "context_length_exceeded"
        assert body["param"] == "max_tokens"
        assert "256" in body["message"]


def test_max_tokens_above_the_maximum_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", max_tokens=100_000)
    body: Any = info.value.body
    assert body["param"] == "max_tokens"
    assert "4096" in body["message"]


def test_default_max_tokens_fits_the_slot(client: openai.OpenAI) -> None:
    # No max_tokens: the default (256) does not fit next to the prompt in a 256-token
    # slot, so generation is capped by the context instead of being refused.
    answer = client.completions.create(model=MODEL, prompt="1, 2, 3, " * 20, temperature=0)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens <= 256


def test_bad_json_schema_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "bogus"}}})
    body: Any = info.value.body
    assert body["param"] == "response_format"


def test_every_response_has_a_request_id(llmos_server: RunningServer) -> None:
    ok = post(llmos_server, "/chat/completions", CHAT)
    bad = post(llmos_server, "/chat/completions", {"model": MODEL})
    health = httpx.get(f"{llmos_server.url}/healthz")
    for response in (ok, bad, health):
        assert len(response.headers["x-request-id"]) >= 16
    given = httpx.get(f"{llmos_server.url}/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    assert ok.json()["id"].endswith(ok.headers["x-request-id"])


def test_health_and_readiness(llmos_server: RunningServer) -> None:
    assert httpx.get(f"{llmos_server.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{llmos_server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_openapi_is_accurate_and_has_no_422(llmos_server: RunningServer) -> None:
    schema = httpx.get(f"{llmos_server.url}/openapi.json").json()
    assert "422" not in str(schema)
    paths = schema["paths"]
    for path in ("/v1/models", "/v1/chat/completions", "/v1/completions", "/healthz",
                 "/readyz"):
        assert path in paths
    chat = paths["/v1/chat/completions"]["post"]
    assert {"200", "400", "404"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionCreate"}
    completion = paths["/v1/completions"]["post"]["requestBody"]["content"]
    assert completion["application/json"]["schema"]["$ref"].endswith("/CompletionCreate")
    assert "ChatMessage" in schema["components"]["schemas"]
    props = schema["components"]["schemas"]["ChatCompletionCreate"]["properties"]
    for name in ("messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop",
                 "seed", "presence_penalty", "frequency_penalty", "logit_bias",
                 "response_format", "stream", "stream_options"):
        assert name in props
