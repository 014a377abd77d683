"""What one inference request may ask for, checked before it is queued.

Each limit is a setting (``limits.*``); a request over one gets a 400 that names
the parameter, the limit and the setting that raises it, and echoes none of the
input. The body size is limited earlier, by the browser guard (413).
"""

from __future__ import annotations

import json
from typing import Any

from llmos.errors import LimitExceeded
from llmos.gateway.schemas import ChatCompletionCreate, CompletionCreate, ResponseFormatJsonSchema
from llmos.settings import RequestLimits


def _over(what: str, count: int, limit: int, setting: str, param: str) -> LimitExceeded:
    return LimitExceeded(
        f"{what} is {count}, more than the limit of {limit}; raise the setting "
        f"limits.{setting} (LLMOS_LIMITS__{setting.upper()}) to allow more", param=param)


def check_request(body: ChatCompletionCreate | CompletionCreate,
                  limits: RequestLimits) -> None:
    names = limits.max_name_chars
    for param, value in (("model", body.model), ("user", body.user)):
        if value is not None and len(value) > names:
            raise _over(f"the length of {param!r}", len(value), names, "max_name_chars", param)
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > limits.max_stop:
        raise _over("the number of stop sequences", len(stops), limits.max_stop, "max_stop",
                    "stop")
    for stop in stops:
        if len(stop) > limits.max_stop_chars:
            raise _over("the length of a stop sequence", len(stop), limits.max_stop_chars,
                        "max_stop_chars", "stop")
    if body.logit_bias and len(body.logit_bias) > limits.max_logit_bias:
        raise _over("the number of logit_bias entries", len(body.logit_bias),
                    limits.max_logit_bias, "max_logit_bias", "logit_bias")
    if body.n is not None and body.n > limits.max_choices:
        raise _over("n", body.n, limits.max_choices, "max_choices", "n")
    if isinstance(body, ChatCompletionCreate):
        _check_chat(body, limits)


def _check_chat(body: ChatCompletionCreate, limits: RequestLimits) -> None:
    if len(body.messages) > limits.max_messages:
        raise _over("the number of messages", len(body.messages), limits.max_messages,
                    "max_messages", "messages")
    for i, message in enumerate(body.messages):
        if isinstance(message.content, list) and len(message.content) > limits.max_content_parts:
            raise _over("the number of content parts of a message", len(message.content),
                        limits.max_content_parts, "max_content_parts", f"messages[{i}].content")
        if message.name is not None and len(message.name) > limits.max_name_chars:
            raise _over("the length of a message's name", len(message.name),
                        limits.max_name_chars, "max_name_chars", f"messages[{i}].name")
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJsonSchema):
        _check_schema(fmt.json_schema.schema_, "response_format's JSON schema",
                      "response_format.json_schema.schema", limits)
    tools = body.tools or []
    if len(tools) > limits.max_tools:
        raise _over("the number of tools", len(tools), limits.max_tools, "max_tools", "tools")
    for i, tool in enumerate(tools):
        name = tool.function.name
        if len(name) > limits.max_name_chars:
            raise _over("the length of a tool's name", len(name), limits.max_name_chars,
                        "max_name_chars", f"tools[{i}].function.name")
        if tool.function.parameters is not None:
            _check_schema(tool.function.parameters, "a tool's parameter schema",
                          f"tools[{i}].function.parameters", limits)


def _check_schema(schema: dict[str, Any], what: str, param: str,
                  limits: RequestLimits) -> None:
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_schema_bytes:
        raise _over(f"the size of {what} in bytes", size, limits.max_schema_bytes,
                    "max_schema_bytes", param)
