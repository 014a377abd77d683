"""Tools with the official client against a real server and the real (270M) model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.conftest import RunningServer
from tests.e2e.tool_defs import ASK, MODEL, TOOLS, valid


@pytest.fixture(scope="module")
def client(roomy_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=roomy_server.api, api_key="unused", max_retries=0)


def test_required_calls_parse_and_validate_in_50_tries_of_50(client: openai.OpenAI) -> None:
    def one(seed: int) -> tuple[str, str, str | None]:
        answer = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=40,
            temperature=1.0, seed=seed)
        choice = answer.choices[0]
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_")
        assert choice.message.content is None
        return call.function.name, call.function.arguments, choice.finish_reason

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(50)))
    assert all(reason == "tool_calls" for _, _, reason in results)
    assert all(valid(name, arguments) for name, arguments, _ in results), results


def test_a_named_function_is_called_streamed_and_assembled_by_the_client(
        client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
            model=MODEL, messages=ASK, tools=TOOLS, max_tokens=40, temperature=0,
            tool_choice={"type": "function", "function": {"name": "get_time"}}) as stream:
        pieces = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    assert valid("get_time", call.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"
    assert len(pieces) > 1  # the arguments came piece by piece
    assert "".join(p.arguments_delta for p in pieces) == call.function.arguments


def test_a_tool_result_is_read_back_in_the_next_turn(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}
    result = "Sunny, 24 degrees, light wind from the south west"
    history: list[Any] = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    turns = [[*history, {"role": "tool", "tool_call_id": "call_1", "content": text}]
             for text in ("", result)]
    answers = [client.chat.completions.create(model=MODEL, messages=m, tools=TOOLS,
                                              tool_choice="none", max_tokens=8, temperature=0)
               for m in turns]
    assert all(a.choices[0].message.content is not None for a in answers)
    assert all(a.choices[0].message.tool_calls is None for a in answers)
    assert answers[0].usage and answers[1].usage
    # the result is in the prompt: more tokens by (at least) its words
    assert answers[1].usage.prompt_tokens - answers[0].usage.prompt_tokens >= 9


def _few_shot() -> list[Any]:
    """Two earlier calls of the tool: enough for the small model to call it again."""
    messages: list[Any] = []
    for i, city in enumerate(("Rome", "Oslo")):
        arguments = json.dumps({"city": city, "unit": "C"})
        messages += [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{i}", "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."}]
    return [*messages, *ASK]


def test_auto_calls_come_parsed_by_the_engine_streamed_and_not(client: openai.OpenAI) -> None:
    """What the model writes after its call (text, another call) varies with the
    machine's numerics even greedy; the call is the same, streamed and not."""
    answer = client.chat.completions.create(
        model=MODEL, messages=_few_shot(), tools=TOOLS, max_tokens=40, temperature=0,
        parallel_tool_calls=False)
    choice = answer.choices[0]
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    assert choice.finish_reason in ("tool_calls", "length")
    pieces: list[Any] = []
    for chunk in client.chat.completions.create(
            model=MODEL, messages=_few_shot(), tools=TOOLS, max_tokens=40, temperature=0,
            parallel_tool_calls=False, stream=True):
        pieces += [p for c in chunk.choices for p in c.delta.tool_calls or ()]
    assert {p.index for p in pieces} == {0}
    assert [p.id for p in pieces if p.id] == [pieces[0].id]  # the id once, first
    assert pieces[0].function and pieces[0].function.name == "get_weather"
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == \
        call.function.arguments


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
])
def test_tool_requests_that_make_no_sense_are_400(client: openai.OpenAI, extra: dict[str, Any],
                                                  param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **extra)
    body: Any = info.value.body
    assert body["param"] == param
