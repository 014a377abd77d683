"""A GGUF with one string of its metadata replaced, for tests that need a hostile file.

Walks the header (metadata, then tensor descriptions), writes it back with the new
value, pads to the file's alignment and copies the tensor data as it was (tensor
offsets count from the start of the data, so they stay right).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _skip_value(data: bytes, at: int, kind: int) -> int:
    if kind in _SIZES:
        return at + _SIZES[kind]
    if kind == _STRING:
        (length,) = struct.unpack_from("<Q", data, at)
        return at + 8 + length
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item in _SIZES:
            return at + _SIZES[item] * count
        for _ in range(count):
            at = _skip_value(data, at, item)
        return at
    raise ValueError(f"GGUF value type {kind}")


def with_string(source: Path, target: Path, key: str, value: str) -> None:
    """``target``: ``source`` with the string ``key`` set to ``value`` (added if absent)."""
    with source.open("rb") as file:
        data = file.read(64 * 1024 * 1024)  # (the header is well within this)
    magic, version, tensors, entries = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF" and version >= 2
    at = 24
    kept: list[bytes] = []
    alignment = 32
    replaced = False
    for _ in range(entries):
        start = at
        (length,) = struct.unpack_from("<Q", data, at)
        name = data[at + 8:at + 8 + length].decode()
        at += 8 + length
        (kind,) = struct.unpack_from("<I", data, at)
        end = _skip_value(data, at + 4, kind)
        if name == "general.alignment":
            (alignment,) = struct.unpack_from("<I", data, at + 4)
        if name == key:
            kept.append(_entry(key, value))
            replaced = True
        else:
            kept.append(data[start:end])
        at = end
    if not replaced:
        kept.append(_entry(key, value))
        entries += 1
    infos_start = at
    for _ in range(tensors):
        (length,) = struct.unpack_from("<Q", data, at)
        at += 8 + length
        (dims,) = struct.unpack_from("<I", data, at)
        at += 4 + 8 * dims + 4 + 8
    infos = data[infos_start:at]
    data_start = -(-at // alignment) * alignment
    header = struct.pack("<4sIQQ", magic, version, tensors, entries) + b"".join(kept) + infos
    padding = (-len(header)) % alignment
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(header + b"\0" * padding)
        src.seek(data_start)
        shutil.copyfileobj(src, dst, 16 * 1024 * 1024)


def _entry(key: str, value: str) -> bytes:
    name, text = key.encode(), value.encode()
    return (struct.pack("<Q", len(name)) + name + struct.pack("<IQ", _STRING, len(text))
            + text)
