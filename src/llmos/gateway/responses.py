"""The Responses API on the chat path: a request becomes a chat request, and the chat
answer's chunks become a response object, or its stream of typed events.

Stateless: nothing is stored (``store: false``), so ``previous_response_id`` is refused
and a conversation goes on by sending its items again (earlier output items included).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import ValidationError

from llmos.bus.messages import ErrorInfo, ReplyChunk, TokenLogprob
from llmos.errors import BadRequest
from llmos.gateway.schemas import ChatCompletionCreate
from llmos.gateway.schemas_responses import (
    FunctionCallItem,
    FunctionCallOutput,
    InputMessage,
    NamedFunctionChoice,
    ResponseCreate,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)
from llmos.gateway.toolcalls import CallReader


def to_chat(body: ResponseCreate) -> ChatCompletionCreate:
    """The chat request a Responses request is: instructions as a system message, input
    items as messages, function calls as an assistant's tool calls, their outputs as
    tool messages."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    items = ([InputMessage(role="user", content=body.input)] if isinstance(body.input, str)
             else body.input)
    for item in items:
        if isinstance(item, InputMessage):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": item.text()})
    chat: dict[str, Any] = {
        "model": body.model, "messages": messages, "stream": body.stream,
        "max_completion_tokens": body.max_output_tokens, "temperature": body.temperature,
        "top_p": body.top_p, "user": body.user, "service_tier": body.service_tier,
        "parallel_tool_calls": body.parallel_tool_calls}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": tool.model_dump(
            exclude_none=True, exclude={"type"})} for tool in body.tools]
    choice = body.tool_choice
    chat["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                           if isinstance(choice, NamedFunctionChoice) else choice)
    fmt = body.text.format if body.text else None
    if isinstance(fmt, TextFormatJsonObject):
        chat["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, TextFormatJsonSchema):
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, "description": fmt.description,
            "strict": fmt.strict}}
    try:
        return ChatCompletionCreate.model_validate(
            {k: v for k, v in chat.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise BadRequest(f"input: {error['msg']}", param="input") from None


def _usage(final: ReplyChunk) -> dict[str, Any]:
    prompt = final.usage.prompt_tokens if final.usage else 0
    completion = final.usage.completion_tokens if final.usage else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def _logprobs(entries: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    return [e.model_dump(exclude={"bytes"}) | {"top_logprobs": []} for e in entries or ()]


class ResponseWriter:
    """Builds one response from the chunks of its chat answer, and the stream's events
    on the way: output items (a message, function calls) opened, added to and closed."""

    def __init__(self, body: ResponseCreate, request_id: str, reader: CallReader) -> None:
        self.body = body
        self.reader = reader
        self.id = f"resp_{request_id}"
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None
        """The message item being written, if one is open."""
        self._calls: dict[int, dict[str, Any]] = {}
        """Function call items being written, by the call's index."""
        self._seq = 0

    def response(self, status: str, final: ReplyChunk | None = None) -> dict[str, Any]:
        body = self.body
        tools = [t.model_dump(exclude_none=True) for t in body.tools or ()]
        choice = body.tool_choice
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status, "error": None,
            "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete"
                                   else None),
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "model": body.model, "output": self.output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": None, "store": False,
            "temperature": body.temperature if body.temperature is not None else 1.0,
            "text": ({"format": body.text.format.model_dump(by_alias=True)}
                     if body.text and body.text.format else {"format": {"type": "text"}}),
            "tool_choice": choice.model_dump() if isinstance(choice, NamedFunctionChoice)
            else choice or "auto",
            "tools": tools, "top_p": body.top_p if body.top_p is not None else 1.0,
            "truncation": "disabled", "usage": _usage(final) if final is not None else None,
            "user": body.user, "metadata": body.metadata or {},
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        snapshot = self.response("in_progress")
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def feed(self, chunk: ReplyChunk) -> list[dict[str, Any]]:
        """The events of one chunk (its text, its calls), and the end with the last."""
        text, pieces = self.reader.read(chunk)
        events: list[dict[str, Any]] = []
        if text:
            events += self._text(text, chunk.logprobs)
        for piece in pieces:
            call = self._calls.get(piece.index)
            if call is None or piece.id is not None:
                events += self._close_message()
                call = {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}",
                        "call_id": piece.id or f"call_{uuid.uuid4().hex[:24]}",
                        "name": piece.name or "", "arguments": "", "status": "in_progress"}
                self._calls[piece.index] = call
                self.output.append(call)
                events.append(self._event("response.output_item.added",
                                          output_index=len(self.output) - 1, item=dict(call)))
            if piece.arguments:
                call["arguments"] += piece.arguments
                events.append(self._event("response.function_call_arguments.delta",
                                          item_id=call["id"], output_index=self._index(call),
                                          delta=piece.arguments))
        if chunk.final:
            events += self._close_message()
            for call in self._calls.values():
                call["status"] = "completed"
                events.append(self._event("response.function_call_arguments.done",
                                          item_id=call["id"], output_index=self._index(call),
                                          name=call["name"], arguments=call["arguments"]))
                events.append(self._event("response.output_item.done",
                                          output_index=self._index(call), item=dict(call)))
            status = "incomplete" if chunk.finish_reason == "length" else "completed"
            events.append(self._event(f"response.{status}",
                                      response=self.response(status, chunk)))
        return events

    def error(self, error: ErrorInfo) -> dict[str, Any]:
        return self._event("error", code=error.code or error.type, message=error.message,
                           param=error.param)

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, each in enumerate(self.output) if each is item)

    def _text(self, text: str, logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        message = self._message
        if message is None:
            message = {"type": "message", "id": f"msg_{uuid.uuid4().hex}",
                       "status": "in_progress", "role": "assistant", "content": []}
            self._message = message
            self.output.append(message)
            index = len(self.output) - 1
            events.append(self._event("response.output_item.added", output_index=index,
                                      item=message | {"content": []}))
            message["content"].append({"type": "output_text", "text": "", "annotations": [],
                                       "logprobs": []})
            events.append(self._event("response.content_part.added", item_id=message["id"],
                                      output_index=index, content_index=0,
                                      part=dict(message["content"][0])))
        part = message["content"][0]
        part["text"] += text
        part["logprobs"] += _logprobs(logprobs)
        events.append(self._event("response.output_text.delta", item_id=message["id"],
                                  output_index=self._index(message), content_index=0,
                                  delta=text, logprobs=_logprobs(logprobs)))
        return events

    def _close_message(self) -> list[dict[str, Any]]:
        message, self._message = self._message, None
        if message is None:
            return []
        index = self._index(message)
        part = message["content"][0]
        message["status"] = "completed"
        return [self._event("response.output_text.done", item_id=message["id"],
                            output_index=index, content_index=0, text=part["text"],
                            logprobs=part["logprobs"]),
                self._event("response.content_part.done", item_id=message["id"],
                            output_index=index, content_index=0, part=dict(part)),
                self._event("response.output_item.done", output_index=index,
                            item=message | {"content": [dict(part)]})]


def sse(event: dict[str, Any]) -> bytes:
    """One event of a Responses stream: named by its type (no ``[DONE]`` at the end)."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
