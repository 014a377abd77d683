"""What kind of file each blob is, and the LLM facts a version's GGUF header gives."""

from __future__ import annotations

import re
from typing import Any

from llmos.errors import BadRequest
from llmos.registry.gguf import ArraySummary, GGUFInfo
from llmos.registry.manifest import (
    ADAPTER_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    OTHER_MEDIA_TYPE,
    README_MEDIA_TYPE,
    TEMPLATE_MEDIA_TYPE,
    TOKENIZER_MEDIA_TYPE,
)

FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
_PART = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}"
PATH_RE = re.compile(rf"^{_PART}(/{_PART}){{0,3}}$")
"""A file's name in a version, in folders (``1_Pooling/config.json``): ``check_filename``."""
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
_TOKENIZER_FILES = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt"}

SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gpt-oss": 2}
"""Every Nth layer attends globally, the others through the sliding window, where the
GGUF does not say (llama.cpp hard-codes these periods per architecture)."""


MAX_DEPTH = 4
"""Folders a model's file may sit in (``1_Pooling/config.json`` of sentence-transformers)."""


def check_filename(filename: str) -> str:
    """A file's name in a version: letters, digits, '.', '_', '+' and '-', starting with
    a letter or digit; in a folder of such names at most ``MAX_DEPTH`` deep (``/``)."""
    parts = filename.split("/")
    if (len(parts) > MAX_DEPTH or ".." in filename
            or not all(FILENAME_RE.fullmatch(part) for part in parts)):
        raise BadRequest(f"invalid file name {filename!r}: letters, digits, '.', '_', '+' "
                         "and '-', starting with a letter or digit, in folders of such "
                         f"names ('/') at most {MAX_DEPTH} deep", param="filename")
    return filename


def is_gguf_name(filename: str) -> bool:
    return filename.lower().endswith(".gguf")


def media_type(filename: str, info: GGUFInfo | None) -> str:
    """The media type of a file, from its name and (for GGUF) its header."""
    lower = filename.lower()
    if info is not None:
        return ADAPTER_MEDIA_TYPE if info.get("general.type") == "adapter" else GGUF_MEDIA_TYPE
    if lower in _TOKENIZER_FILES:
        return TOKENIZER_MEDIA_TYPE
    if lower.startswith(("license", "licence", "copying", "notice")):
        return LICENSE_MEDIA_TYPE
    if lower.startswith("readme"):
        return README_MEDIA_TYPE
    if lower.endswith(".jinja"):
        return TEMPLATE_MEDIA_TYPE
    return OTHER_MEDIA_TYPE


def check_splits(filenames: list[str]) -> None:
    """Split GGUF files (``-00001-of-00003``) come as a complete set."""
    groups: dict[tuple[str, int], set[int]] = {}
    for name in filenames:
        match = SPLIT_RE.fullmatch(name)
        if match:
            key = (match["stem"], int(match["count"]))
            groups.setdefault(key, set()).add(int(match["index"]))
    for (stem, count), have in groups.items():
        missing = sorted(set(range(1, count + 1)) - have)
        if missing:
            names = ", ".join(f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in missing)
            raise BadRequest(f"split GGUF {stem} is incomplete: missing {names}",
                             param="files")


def describe(parts: list[GGUFInfo]) -> dict[str, Any]:
    """LLM metadata of one set of weights (a file, or all the parts of a split file)."""
    if not parts:
        return {}
    head = parts[0]  # the first part of a split file holds the model's metadata
    arch = head.architecture
    blocks = _int(head.arch("block_count"))
    heads = _int(head.arch("attention.head_count"))
    embedding = _int(head.arch("embedding_length"))
    key_length = _int(head.arch("attention.key_length"))
    if key_length is None and embedding and heads:
        key_length = embedding // heads
    value_length = _int(head.arch("attention.value_length")) or key_length
    window = _int(head.arch("attention.sliding_window"))
    pattern = _int(head.arch("attention.sliding_window_pattern"))
    if window and pattern is None and arch is not None:
        pattern = SWA_PATTERNS.get(arch)
    layout = swa_layout(head, blocks or 0)
    tokens = head.get("tokenizer.ggml.tokens")
    vocab = tokens.length if isinstance(tokens, ArraySummary) else (
        len(tokens) if isinstance(tokens, list) else None)
    facts: dict[str, Any] = {
        "format": "gguf",
        "gguf_version": head.version,
        "type": head.get("general.type") or "model",
        "architecture": arch,
        "model_name": head.get("general.name"),
        "parameter_count": sum(p.parameter_count for p in parts),
        "quantization": head.quantization,
        "context_length": _int(head.arch("context_length")),
        "embedding_length": embedding,
        "block_count": blocks,
        "head_count": heads,
        "head_count_kv": _int(head.arch("attention.head_count_kv")) or heads,
        "key_length": key_length,
        "value_length": value_length,
        "vocab_size": vocab,
        "sliding_window": window,
        "sliding_window_pattern": pattern,
        "swa_layers": sum(layout) if blocks else None,
        "chat_template_sha256": head.chat_template_sha256,
        "license": head.get("general.license"),
    }
    return {k: v for k, v in facts.items() if v is not None}


def swa_layout(info: GGUFInfo, n_layer: int) -> list[bool]:
    """Which layers attend through the sliding window (llama.cpp's ``is_swa``)."""
    if not info.arch("attention.sliding_window"):
        return [False] * n_layer
    pattern = info.arch("attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == n_layer:
        return [bool(p) for p in pattern]
    period = _int(pattern) or SWA_PATTERNS.get(info.architecture or "", 0)
    if period <= 0:
        return [False] * n_layer
    # llama.cpp's set_swa_pattern(n): every n-th layer global, the others sliding
    return [layer % period < period - 1 for layer in range(n_layer)]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
