"""A GGUF reader for the header only: metadata and tensor descriptions, never weights.

GGUF files come from anywhere, so the reader treats every byte as hostile: each
count, length and offset is checked against the bytes that are left before it is
used; at most ``MAX_HEADER_BYTES`` are read (into one buffer, parsed in place);
walking arrays of strings is capped; long strings and arrays are summarised, not
kept. Whatever the input, it returns a ``GGUFInfo`` or raises ``GGUFError``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos.errors import BadRequest

MAX_HEADER_BYTES = 48 * 1024 * 1024
MAX_STRING_ITEMS = 1_000_000  # strings walked in arrays, in all (vocabularies: ~260k)
MAX_KEPT_STRING = 1 << 20
MAX_KEPT_ARRAY = 64
MAX_DIMS = 8  # (GGML has 4; a little room for later versions)
MAX_ENTRIES = 16_384  # metadata entries (real files: tens)
MAX_TENSORS = 16_384  # (real files: hundreds to a few thousand)

_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"), 1: struct.Struct("<b"), 2: struct.Struct("<H"),
    3: struct.Struct("<h"), 4: struct.Struct("<I"), 5: struct.Struct("<i"),
    6: struct.Struct("<f"), 7: struct.Struct("<?"), 10: struct.Struct("<Q"),
    11: struct.Struct("<q"), 12: struct.Struct("<d")}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")

# general.file_type (llama_ftype) -> name, for the common ones
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
              15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


class GGUFError(BadRequest):
    """The file is not a GGUF this reader accepts; the message says where it broke."""

    code = "invalid_gguf"


@dataclass(frozen=True)
class ArraySummary:
    """An array too long to keep: its item type and length."""

    item_type: int
    length: int
    longest: int | None = None
    """For strings: the longest item's size in bytes (a vocabulary's longest token)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def arch(self, key: str) -> Any:
        """``<architecture>.<key>``, e.g. ``arch("context_length")``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def parameter_count(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def quantization(self) -> str | None:
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int):
            return FILE_TYPES.get(file_type, f"type {file_type}")
        return None

    @property
    def longest_token_bytes(self) -> int | None:
        """The vocabulary's longest token in bytes: no token covers more characters, so a
        text of n characters is at least n / this many tokens."""
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArraySummary):
            return tokens.longest
        if isinstance(tokens, list) and tokens:
            return max(len(str(t).encode()) for t in tokens)
        return None

    @property
    def chat_template_sha256(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        if isinstance(template, str):
            return "sha256:" + hashlib.sha256(template.encode()).hexdigest()
        return None


class _Cursor:
    def __init__(self, data: bytes, file_size: int) -> None:
        self.data = memoryview(data)
        self.at = 0
        self.file_size = file_size
        self.strings_walked = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.at

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            if len(self.data) < self.file_size and n <= self.file_size - self.at:
                raise GGUFError(f"the GGUF header is larger than {MAX_HEADER_BYTES} bytes "
                                f"(at {what})")
            raise GGUFError(f"the GGUF header ends early: {what} needs {n} bytes at "
                            f"offset {self.at}, {max(self.left, 0)} are left")

    def scalar(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        value = fmt.unpack_from(self.data, self.at)[0]
        self.at += fmt.size
        return value

    def string(self, what: str, keep: bool = True) -> str | None:
        length = self.scalar(_U64, what)
        self.need(length, what)
        start = self.at
        self.at += length
        if not keep or length > MAX_KEPT_STRING:
            return None
        return bytes(self.data[start:self.at]).decode("utf-8", "replace")


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header of the GGUF file at ``path``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            data = stream.read(min(size, MAX_HEADER_BYTES))
    except OSError as exc:
        raise GGUFError(f"cannot read {path.name}: {exc.strerror}") from exc
    return parse_gguf(data, size)


def parse_gguf(data: bytes, file_size: int | None = None) -> GGUFInfo:
    """Parse a GGUF header from the first bytes of a file of ``file_size`` bytes."""
    total = len(data) if file_size is None else file_size
    cursor = _Cursor(data, total)
    cursor.need(4, "the magic number")
    if bytes(cursor.data[:4]) != b"GGUF":
        raise GGUFError("not a GGUF file: it does not start with the magic bytes 'GGUF'")
    cursor.at = 4
    version = cursor.scalar(_U32, "the version")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported (2 and 3 are)")
    tensor_count = cursor.scalar(_U64, "the tensor count")
    kv_count = cursor.scalar(_U64, "the metadata count")
    if kv_count > MAX_ENTRIES or kv_count > cursor.left // 13:  # (an entry takes >= 13)
        raise GGUFError(f"the header claims {kv_count} metadata entries, more than fit")
    if tensor_count > MAX_TENSORS or tensor_count > cursor.left // 24:
        raise GGUFError(f"the header claims {tensor_count} tensors, more than fit")
    metadata: dict[str, Any] = {}
    for index in range(kv_count):
        key = cursor.string(f"the key of metadata entry {index}")
        kind = cursor.scalar(_U32, f"the type of {key!r}")
        metadata[key or f"#{index}"] = _value(cursor, kind, f"{key!r}", depth=0)
    tensors = [_tensor(cursor, i) for i in range(tensor_count)]
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"general.alignment {alignment!r} is not a power of two")
    data_start = -(-cursor.at // alignment) * alignment
    for tensor in tensors:
        if tensor.offset % alignment or data_start + tensor.offset > total:
            raise GGUFError(f"tensor {tensor.name!r} has an offset ({tensor.offset}) outside "
                            "the file or off the alignment")
    return GGUFInfo(version=version, metadata=metadata, tensors=tensors)


def _value(cursor: _Cursor, kind: int, what: str, *, depth: int) -> Any:
    fmt = _SCALARS.get(kind)
    if fmt is not None:
        return cursor.scalar(fmt, what)
    if kind == _STRING:
        return cursor.string(what)
    if kind != _ARRAY:
        raise GGUFError(f"{what} has an unknown value type {kind}")
    if depth >= 2:
        raise GGUFError(f"{what} nests arrays too deeply")
    item = cursor.scalar(_U32, f"the item type of {what}")
    count = cursor.scalar(_U64, f"the length of {what}")
    item_fmt = _SCALARS.get(item)
    if item_fmt is not None:
        cursor.need(count * item_fmt.size, what)
        if count > MAX_KEPT_ARRAY:
            cursor.at += count * item_fmt.size
            return ArraySummary(item, count)
        values = [item_fmt.unpack_from(cursor.data, cursor.at + i * item_fmt.size)[0]
                  for i in range(count)]
        cursor.at += count * item_fmt.size
        return values
    if item == _STRING:
        if count > cursor.left // 8:
            raise GGUFError(f"{what} claims {count} strings, more than fit")
        cursor.strings_walked += count
        if cursor.strings_walked > MAX_STRING_ITEMS:
            raise GGUFError(f"the header holds more than {MAX_STRING_ITEMS} strings in arrays")
        if count <= MAX_KEPT_ARRAY:
            return [cursor.string(f"item {i} of {what}") for i in range(count)]
        return ArraySummary(item, count, _skip_strings(cursor, count, what))
    if item == _ARRAY:
        if count > MAX_KEPT_ARRAY:
            raise GGUFError(f"{what} is an array of {count} arrays: not supported")
        return [_value(cursor, _ARRAY, f"item {i} of {what}", depth=depth + 1)
                for i in range(count)]
    raise GGUFError(f"{what} is an array of unknown type {item}")


def _skip_strings(cursor: _Cursor, count: int, what: str) -> int:
    """Walk ``count`` strings without keeping them (a vocabulary), as fast as Python can;
    the longest one's size in bytes."""
    data, at, end, unpack = cursor.data, cursor.at, len(cursor.data), _U64.unpack_from
    longest = 0
    for _ in range(count):
        if at + 8 > end:
            break
        size = unpack(data, at)[0]
        longest = max(longest, size)
        at += 8 + size
        if at > end:
            break
    else:
        cursor.at = at
        return longest
    if len(data) < cursor.file_size:
        raise GGUFError(f"the GGUF header is larger than {MAX_HEADER_BYTES} bytes (at {what})")
    raise GGUFError(f"the GGUF header ends early, inside the strings of {what}")


def _tensor(cursor: _Cursor, index: int) -> TensorInfo:
    name = cursor.string(f"the name of tensor {index}") or f"#{index}"
    dims = cursor.scalar(_U32, f"the rank of tensor {name!r}")
    if dims == 0 or dims > MAX_DIMS:
        raise GGUFError(f"tensor {name!r} has {dims} dimensions")
    shape = tuple(cursor.scalar(_U64, f"the shape of tensor {name!r}") for _ in range(dims))
    if any(d == 0 or d > 1 << 40 for d in shape) or math.prod(shape) > 1 << 48:
        raise GGUFError(f"tensor {name!r} has an impossible shape {shape}")
    ggml_type = cursor.scalar(_U32, f"the type of tensor {name!r}")
    offset = cursor.scalar(_U64, f"the offset of tensor {name!r}")
    return TensorInfo(name, shape, ggml_type, offset)
