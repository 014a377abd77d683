"""Tool calls: what the engine is asked for, and the calls read back in OpenAI's shapes.

Two ways to a call:

- ``auto`` (the default with tools): the model's chat template renders the tools and
  the engine parses calls out of what the model writes (llama.cpp knows the formats
  of the common templates), handing them on piece by piece.
- ``required`` or a named function: the engine is held to a JSON schema, one object
  ``{"name": …, "arguments": …}`` whose arguments follow the function's parameter
  schema (llama.cpp's grammar), and the gateway reads the call out of that text as it
  streams. One call per answer: a forced answer is exactly one call.

``none`` renders the tools but asks for no call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from llmos.bus.messages import ReplyChunk, ToolCallDelta
from llmos.errors import BadRequest
from llmos.gateway.schemas import ChatCompletionCreate, NamedToolChoice, ToolDefinition

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {},
                                 "additionalProperties": False}


@dataclass(frozen=True)
class ToolMode:
    forced: bool
    """The answer is one call held to a schema (``required`` or a named function)."""
    parallel: bool
    """Calls after the first are kept (``auto`` with ``parallel_tool_calls``)."""

    def reader(self) -> CallReader:
        return CallReader(self)


def engine_fields(body: ChatCompletionCreate) -> tuple[dict[str, Any], ToolMode | None]:
    """What to add to the engine's body for the request's tools, and how to read calls."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        return {}, None
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    if choice is None or choice == "auto":
        fields = {"tools": tools, "tool_choice": "auto",
                  "parallel_tool_calls": body.parallel_tool_calls is not False}
        return fields, ToolMode(forced=False, parallel=body.parallel_tool_calls is not False)
    if choice == "none":
        return {"tools": tools, "tool_choice": "none"}, None
    name = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if name is not None and name not in body.tool_names():
        raise BadRequest(f"tool_choice names the function {name!r}, which is not in tools",
                         param="tool_choice")
    schema = forced_schema(body.tools, name)
    # The template still renders the tools ("none": the engine parses no calls of its
    # own); the schema holds the answer to one call.
    return ({"tools": tools, "tool_choice": "none",
             "response_format": {"type": "json_schema",
                                 "json_schema": {"name": "tool_call", "schema": schema}}},
            ToolMode(forced=True, parallel=False))


def forced_schema(tools: list[ToolDefinition], name: str | None) -> dict[str, Any]:
    """One call of the named function, or of any of them: ``{"name", "arguments"}``."""
    options = [{"type": "object",
                "properties": {"name": {"const": tool.function.name},
                               "arguments": closed(tool.function.parameters or NO_PARAMETERS)},
                "required": ["name", "arguments"], "additionalProperties": False}
               for tool in tools if name is None or tool.function.name == name]
    return options[0] if len(options) == 1 else {"anyOf": options}


def closed(schema: Any) -> Any:
    """The schema with every object that lists its ``properties`` and says nothing of
    others closed to others (``additionalProperties: false``, as OpenAI's strict mode
    asks): what it allows, the original allows too, and a small model cannot wander off
    writing made-up properties until its token budget runs out."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) if key not in ("const", "enum", "default", "examples")
           else value for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ForcedCall:
    """Reads the forced answer ``{"name": …, "arguments": {…}}`` as it streams: the call's
    first piece once its name is complete, then the arguments' text as it comes."""

    _HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')

    def __init__(self) -> None:
        self.text = ""
        self.id = new_call_id()
        self.name: str | None = None
        self._sent = 0
        self._end: int | None = None
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.text += text
        pieces: list[ToolCallDelta] = []
        if self.name is None:
            head = self._HEAD.match(self.text)
            if head is None:
                return pieces
            self.name = json.loads(head.group(1))
            self._sent = self._pos = head.end()
            pieces.append(ToolCallDelta(index=0, id=self.id, name=self.name))
        self._scan()
        stop = self._end if self._end is not None else len(self.text)
        if stop > self._sent:
            arguments = self.text[self._sent:stop]
            self._sent = stop
            if pieces:
                pieces[0] = pieces[0].model_copy(update={"arguments": arguments})
            else:
                pieces.append(ToolCallDelta(index=0, arguments=arguments))
        return pieces

    def close(self) -> list[ToolCallDelta]:
        """What is left once the text is complete: the whole call, when its name did not
        come first (a JSON object's keys may come in any order)."""
        if self.name is not None:
            return []
        try:
            value = json.loads(self.text)
        except ValueError:
            return []
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return []
        self.name = value["name"]
        return [ToolCallDelta(index=0, id=self.id, name=self.name,
                              arguments=json.dumps(value.get("arguments", {})))]

    def _scan(self) -> None:
        """Finds where the arguments' object ends (strings and nesting followed)."""
        text = self.text
        while self._end is None and self._pos < len(text):
            char = text[self._pos]
            self._pos += 1
            if self._depth == 0 and char.isspace():
                self._sent = self._pos  # (the space before the arguments is not theirs)
            elif self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._end = self._pos


class CallReader:
    """One choice's answer: its content text and its tool calls, chunk by chunk."""

    def __init__(self, mode: ToolMode) -> None:
        self.mode = mode
        self._forced = ForcedCall() if mode.forced else None
        self.called = False
        self._dropped = False
        """A call after the first came and was left out (no parallel calls): the answer
        was complete before it, whatever ended the generation."""

    def read(self, chunk: ReplyChunk) -> tuple[str, list[ToolCallDelta]]:
        """The chunk's content text and call pieces (a forced answer has no content)."""
        if self._forced is not None:
            pieces = self._forced.feed(chunk.text)
            if chunk.final:
                pieces += self._forced.close()
            text = ""
        else:
            text = chunk.text
            pieces = list(chunk.tool_calls or ())
            if not self.mode.parallel:
                kept = [p for p in pieces if p.index == 0]
                self._dropped = self._dropped or len(kept) < len(pieces)
                pieces = kept
        self.called = self.called or bool(pieces)
        return text, pieces

    def finish_reason(self, reason: str | None) -> str | None:
        if self.called and (reason in ("stop", "tool_calls") or self._dropped):
            return "tool_calls"
        return reason


def delta_json(pieces: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Call pieces in a streamed delta's shape (``choices[].delta.tool_calls``)."""
    out: list[dict[str, Any]] = []
    for piece in pieces:
        if piece.id is not None:
            out.append({"index": piece.index, "id": piece.id, "type": "function",
                        "function": {"name": piece.name or "", "arguments": piece.arguments}})
        else:
            out.append({"index": piece.index, "function": {"arguments": piece.arguments}})
    return out


def assembled(pieces: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Whole calls, in a message's shape (``choices[].message.tool_calls``)."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": piece.id or new_call_id(),
                                              "type": "function",
                                              "function": {"name": "", "arguments": ""}})
        if piece.id is not None:
            call["id"] = piece.id
        if piece.name:
            call["function"]["name"] = piece.name
        call["function"]["arguments"] += piece.arguments
    return [calls[index] for index in sorted(calls)]


def engine_messages(body: ChatCompletionCreate) -> list[dict[str, Any]]:
    """The conversation for the engine's template: plain text contents, assistant tool
    calls and tool results in OpenAI's shape."""
    messages: list[dict[str, Any]] = []
    for m in body.messages:
        message: dict[str, Any] = {"role": m.role if m.role != "developer" else "system",
                                   "content": m.text()}
        if m.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    return messages
