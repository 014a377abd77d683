"""Tools the tool and Responses tests share, and a check of call arguments."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs

MODEL = "gemma-3-270m"
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30},
                   "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
        "required": ["zone"]}}},
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


def valid(name: str, arguments: str) -> bool:
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    return bool(jsonschema_rs.validator_for(schema).is_valid(json.loads(arguments)))
