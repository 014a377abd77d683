"""API keys: ``llmos-<key id>.<secret>``.

The key id (12 hex digits) finds the key; the secret (32 random bytes, base64url) proves
it. Only the SHA-256 of the secret is stored: a fast hash is right for a random 256-bit
secret (nothing to brute-force, unlike a password), and it keeps the check off the
request path's budget (about a microsecond).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "llmos-"
_SHAPE = re.compile(r"^llmos-([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_sha256: str
    token: str
    """What the holder sends (shown once, never stored)."""


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, digest(secret), f"{PREFIX}{key_id}.{secret}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """The key id and secret of a well-formed key, else None."""
    match = _SHAPE.match(token)
    return (match.group(1), match.group(2)) if match else None


def matches(secret: str, secret_sha256: str) -> bool:
    return hmac.compare_digest(digest(secret), secret_sha256)
