from __future__ import annotations

import json

import pytest

from llmos.bus.messages import ReplyChunk, decode, encode
from llmos.errors import BusError


def test_round_trip() -> None:
    chunk = ReplyChunk(request_id="r", attempt=2, seq=5, text="hi")
    assert decode(ReplyChunk, encode(chunk)) == chunk


def test_another_schema_version_fails_loudly() -> None:
    data = json.loads(encode(ReplyChunk(request_id="r", attempt=1, seq=0)))
    data["v"] = 2
    with pytest.raises(BusError):
        decode(ReplyChunk, json.dumps(data).encode())


def test_garbage_is_refused() -> None:
    with pytest.raises(BusError):
        decode(ReplyChunk, b"\x80\x04pickle")
