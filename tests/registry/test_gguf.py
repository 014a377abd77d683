"""The GGUF header reader: the real model file, and hostile input of every shape."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmos.registry.gguf import (
    MAX_ENTRIES,
    MAX_STRING_ITEMS,
    MAX_TENSORS,
    ArraySummary,
    GGUFError,
    parse_gguf,
    read_gguf,
)
from tests.model import gemma_path


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def string_entry(key: str, value: str) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value)


def uint32_entry(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<II", 4, value)


def make_gguf(*, version: int = 3, strings: int = 100, tensors: int = 3, file_type: int = 15,
              extra: tuple[bytes, ...] = ()) -> bytes:
    """A small valid GGUF header: scalars, a string, arrays, and tensor infos."""
    entries = [
        _string("general.architecture") + struct.pack("<I", 8) + _string("gemma3"),
        _string("gemma3.context_length") + struct.pack("<II", 4, 32768),
        _string("general.file_type") + struct.pack("<II", 4, file_type),
        _string("gemma3.rope.freq_base") + struct.pack("<If", 6, 10000.0),
        _string("tokenizer.chat_template") + struct.pack("<I", 8) + _string("{{ x }}"),
        _string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, strings)
        + b"".join(_string(f"tok{i}") for i in range(strings)),
        _string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, strings)
        + struct.pack(f"<{strings}f", *([0.5] * strings)),
        _string("general.tags") + struct.pack("<IIQ", 9, 8, 2) + _string("a") + _string("b"),
        *extra,
    ]
    infos = b"".join(_string(f"blk.{i}.weight") + struct.pack("<IQQIQ", 2, 64, 32, 12, i * 2048)
                     for i in range(tensors))
    header = b"GGUF" + struct.pack("<IQQ", version, tensors, len(entries)) + b"".join(entries)
    header += infos
    padding = -len(header) % 32
    return header + b"\0" * padding + b"\0" * (2048 * tensors)


def test_a_valid_header() -> None:
    info = parse_gguf(make_gguf())
    assert info.architecture == "gemma3"
    assert info.arch("context_length") == 32768
    assert info.quantization == "Q4_K_M"
    assert info.parameter_count == 3 * 64 * 32
    assert info.get("general.tags") == ["a", "b"]
    assert info.get("tokenizer.ggml.tokens") == ArraySummary(8, 100, longest=5)
    assert info.longest_token_bytes == 5
    assert info.chat_template_sha256 is not None and info.chat_template_sha256.startswith(
        "sha256:")


def test_the_real_default_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = gemma_path(tmp_path_factory)
    started = time.monotonic()
    info = read_gguf(path)
    assert time.monotonic() - started < 2.0
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert 250_000_000 < info.parameter_count < 290_000_000  # "270M"
    assert info.arch("block_count") == 18
    assert info.arch("attention.head_count_kv") == 1
    assert info.arch("attention.sliding_window") == 512
    assert info.chat_template_sha256 is None  # this GGUF carries no chat template


@pytest.mark.parametrize(("data", "says"), [
    (b"", "ends early"),
    (b"GGML" + b"\0" * 60, "magic"),
    (b"GGUF" + struct.pack("<IQQ", 7, 0, 0), "version 7"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60), "metadata entries"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0), "tensors"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"x" * 20,
     "ends early"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("k") + struct.pack("<I", 99) + b"\0" * 8,
     "unknown value type"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("k") + struct.pack("<IIQ", 9, 8, 1 << 40)
     + b"\0" * 64, "more than fit"),
])
def test_bad_headers_get_one_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(GGUFError) as info:
        parse_gguf(data)
    assert says in info.value.message


def test_the_worst_headers_within_the_caps_take_under_a_second() -> None:
    entry = _string("") + struct.pack("<IB", 0, 1)  # 13 bytes, the smallest entry
    tensor = _string("") + struct.pack("<IQIQ", 1, 1, 0, 0)
    vocabulary = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("k")
                  + struct.pack("<IIQ", 9, 8, MAX_STRING_ITEMS)
                  + struct.pack("<Q", 0) * MAX_STRING_ITEMS)
    for data in (b"GGUF" + struct.pack("<IQQ", 3, 0, MAX_ENTRIES) + entry * MAX_ENTRIES,
                 b"GGUF" + struct.pack("<IQQ", 3, MAX_TENSORS, 0) + tensor * MAX_TENSORS
                 + b"\0" * 64, vocabulary):
        started = time.monotonic()
        parse_gguf(data)
        assert time.monotonic() - started < 1.0
    with pytest.raises(GGUFError, match="metadata entries"):
        parse_gguf(b"GGUF" + struct.pack("<IQQ", 3, 0, MAX_ENTRIES + 1) + entry * 10)


def test_a_vocabulary_past_the_cap_is_refused_fast() -> None:
    count = MAX_STRING_ITEMS + 1
    data = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("k")
            + struct.pack("<IIQ", 9, 8, count) + struct.pack("<Q", 0) * count)
    started = time.monotonic()
    with pytest.raises(GGUFError, match="strings in arrays"):
        parse_gguf(data)
    assert time.monotonic() - started < 1.0


VALID = make_gguf()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "u64", "u32", "truncate"]))
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "u64" and at + 8 <= len(data):
            value = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]))
            data[at:at + 8] = struct.pack("<Q", value)
        elif action == "u32" and at + 4 <= len(data):
            data[at:at + 4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        elif action == "truncate":
            del data[at:]
            if not data:
                break
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_any_mutation_parses_or_raises_one_error_fast_and_small(data: bytes) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        parse_gguf(data)
    except GGUFError:
        pass
    finally:
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 64 * 1024 * 1024


def test_a_file_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf(tmp_path / "missing.gguf")
