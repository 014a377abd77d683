"""The Responses API with the official client against a real server and the real model."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import RunningServer
from tests.e2e.tool_defs import ASK, MODEL, TOOLS, valid

FUNCTIONS: list[Any] = [{"type": "function", **tool["function"]} for tool in TOOLS]


@pytest.fixture(scope="module")
def client(roomy_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=roomy_server.api, api_key="unused", max_retries=0)


def test_create_with_text_and_instructions(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Count: 1, 2, 3,",
                                       instructions="Continue the count.",
                                       max_output_tokens=6, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.output_text and "<" not in response.output_text
    assert response.usage is not None and 0 < response.usage.output_tokens <= 6
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    assert response.store is False


def test_stream_with_text_has_the_typed_events_in_order(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Count: 1, 2, 3,",
                                 max_output_tokens=6, temperature=0) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done",
                            "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas and deltas == done.text
    final: Any = events[-1]
    assert final.response.output_text == deltas


def test_a_function_call_created_and_streamed(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input=ASK, tools=FUNCTIONS,
                                       tool_choice="required", max_output_tokens=40)
    [call] = response.output
    assert call.type == "function_call" and response.status == "completed"
    assert valid(call.name, call.arguments)
    with client.responses.stream(model=MODEL, input=ASK, tools=FUNCTIONS, temperature=0,
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=40) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    [streamed] = final.output
    assert streamed.type == "function_call" and streamed.name == "get_weather"
    assert "".join(deltas) == streamed.arguments and valid("get_weather", streamed.arguments)


def test_a_conversation_goes_on_with_the_call_and_its_output(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input=ASK, tools=FUNCTIONS,
                                    tool_choice="required", max_output_tokens=40)
    [call] = first.output
    assert call.type == "function_call"
    conversation: list[Any] = [*ASK, call.model_dump(exclude_none=True),
                               {"type": "function_call_output", "call_id": call.call_id,
                                "output": json.dumps({"forecast": "sunny", "degrees": 24})}]
    second = client.responses.create(model=MODEL, input=conversation, tools=FUNCTIONS,
                                     tool_choice="none", max_output_tokens=6, temperature=0)
    assert [item.type for item in second.output] == ["message"]
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output


def test_stored_state_is_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_x")
    body: Any = info.value.body
    assert (body["code"], body["param"]) == ("unsupported_parameter", "previous_response_id")
    assert "not stored" in body["message"]
