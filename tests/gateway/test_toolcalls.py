"""Reading tool calls: the forced JSON answer, piece by piece, and calls assembled."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos.bus.messages import ReplyChunk, ToolCallDelta
from llmos.errors import BadRequest
from llmos.gateway.schemas import ChatCompletionCreate
from llmos.gateway.toolcalls import ForcedCall, ToolMode, assembled, closed, engine_fields

ANSWER = ('{\n  "name": "get_weather",\n  "arguments": {"city": "Pa{r}is \\"x\\"", '
          '"days": [1, 2]}\n}')


def _read(pieces_of_text: list[str]) -> list[ToolCallDelta]:
    forced = ForcedCall()
    pieces = [p for text in pieces_of_text for p in forced.feed(text)]
    return pieces + forced.close()


def test_a_forced_answer_read_whole_is_one_call() -> None:
    [call] = assembled(_read([ANSWER]))
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": 'Pa{r}is "x"', "days": [1, 2]}
    assert call["id"].startswith("call_")


@given(st.lists(st.integers(min_value=1, max_value=len(ANSWER)), max_size=12))
def test_any_split_of_the_text_gives_the_same_call(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(ANSWER)]
    pieces = _read([ANSWER[a:b] for a, b in itertools.pairwise(bounds)])
    assert pieces[0].id is not None and pieces[0].name == "get_weather"
    assert all(p.id is None for p in pieces[1:])  # the id and name once, first
    assert assembled(pieces) == [{**assembled(_read([ANSWER]))[0], "id": pieces[0].id}]


def test_keys_in_another_order_give_the_call_at_the_end() -> None:
    forced = ForcedCall()
    assert forced.feed('{"arguments": {"a": 1}, "name": "f"}') == []
    [piece] = forced.close()
    assert (piece.name, json.loads(piece.arguments)) == ("f", {"a": 1})


def test_a_cut_answer_keeps_what_came() -> None:
    [call] = assembled(_read(['{"name": "f", "arguments": {"a": "ab']))
    assert call["function"] == {"name": "f", "arguments": '{"a": "ab'}


def test_auto_keeps_only_the_first_call_without_parallel_calls() -> None:
    chunk = ReplyChunk(request_id="r", attempt=1, seq=0, final=True, finish_reason="stop",
                       tool_calls=[ToolCallDelta(index=0, id="a", name="f", arguments="{}"),
                                   ToolCallDelta(index=1, id="b", name="g", arguments="{}")])
    reader = ToolMode(forced=False, parallel=False).reader()
    _text, pieces = reader.read(chunk)
    assert [p.id for p in pieces] == ["a"]
    assert reader.finish_reason("stop") == "tool_calls"
    # the budget ran out on a call left out: the answer was whole before it
    assert reader.finish_reason("length") == "tool_calls"
    alone = ToolMode(forced=False, parallel=True).reader()
    alone.read(chunk)
    assert alone.finish_reason("length") == "length"


def _body(**fields: object) -> ChatCompletionCreate:
    tools = [{"type": "function", "function": {"name": n, "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}} for n in ("f", "g")]
    return ChatCompletionCreate.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
        | fields)


def test_required_holds_the_answer_to_a_call_of_any_tool() -> None:
    fields, mode = engine_fields(_body(tool_choice="required"))
    assert mode is not None and mode.forced
    schema = fields["response_format"]["json_schema"]["schema"]
    assert [o["properties"]["name"]["const"] for o in schema["anyOf"]] == ["f", "g"]
    assert fields["tool_choice"] == "none" and len(fields["tools"]) == 2


def test_a_named_function_is_the_only_one_allowed() -> None:
    fields, _ = engine_fields(_body(tool_choice={"type": "function", "function": {"name": "g"}}))
    schema = fields["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["name"] == {"const": "g"}
    with pytest.raises(BadRequest, match="not in tools"):
        engine_fields(_body(tool_choice={"type": "function", "function": {"name": "h"}}))


def test_tool_choice_without_tools_is_refused() -> None:
    body = ChatCompletionCreate.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"})
    with pytest.raises(BadRequest) as info:
        engine_fields(body)
    assert info.value.param == "tool_choice"


def test_objects_that_list_properties_are_closed_for_a_forced_call() -> None:
    fields, _ = engine_fields(_body(tool_choice="required"))
    arguments = fields["response_format"]["json_schema"]["schema"]["anyOf"][0][
        "properties"]["arguments"]
    assert arguments["additionalProperties"] is False
    open_map = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert closed({"type": "object", "properties": {"m": open_map}}) == {
        "type": "object", "properties": {"m": open_map}, "additionalProperties": False}
    assert closed({"type": "object"}) == {"type": "object"}  # (a free-form object stays)
