"""The prefixes of a prompt, as hashes a replica can advertise and a gateway can match.

A chat's prompt grows by whole messages: the next turn of a conversation resends the
messages before it, then the answer, then the new question. So a chat's prefixes end
at message boundaries: hash *i* covers the request's tools and its first *i* messages
(chained, so each hash stands for everything before it). A completion's prompt is
cut every ``BLOCK_CHARS`` characters instead. Each hash comes with the length of the
text it covers, so a gateway can ignore prefixes too short to be worth a detour.

Pure: a request body in, hashes out; the gateway computes them once per request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

BLOCK_CHARS = 256
"""A completion prompt's prefixes end every this many characters."""
MAX_PREFIXES = 64
"""The longest ones are kept: a long chat's first messages are covered by later hashes."""


@dataclass(frozen=True)
class Prefixes:
    hashes: list[str]
    """Shortest prefix first."""
    chars: list[int]
    """The length of the text each hash covers."""


NONE = Prefixes([], [])


def _step(previous: bytes, text: str) -> bytes:
    return hashlib.blake2b(previous + text.encode("utf-8", "surrogatepass"),
                           digest_size=8).digest()


def prefixes(kind: str, body: dict[str, Any]) -> Prefixes:
    """The prefix hashes of a chat or completion request (none for other requests)."""
    if kind == "chat":
        return _chat(body)
    if kind == "completion" and isinstance(body.get("prompt"), str):
        return _completion(body["prompt"])
    return NONE


def _chat(body: dict[str, Any]) -> Prefixes:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return NONE
    # What the chat template renders before the messages: the tools' definitions.
    state = _step(b"chat", _canonical(body.get("tools") or []))
    hashes, chars, length = [], [], 0
    for message in messages:
        text = _canonical(message)
        state = _step(state, text)
        length += len(text)
        hashes.append(state.hex())
        chars.append(length)
    return Prefixes(hashes[-MAX_PREFIXES:], chars[-MAX_PREFIXES:])


def _completion(prompt: str) -> Prefixes:
    state = b"completion"
    hashes, chars = [], []
    for end in range(BLOCK_CHARS, len(prompt) + 1, BLOCK_CHARS):
        state = _step(state, prompt[end - BLOCK_CHARS:end])
        hashes.append(state.hex())
        chars.append(end)
    return Prefixes(hashes[-MAX_PREFIXES:], chars[-MAX_PREFIXES:])


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
