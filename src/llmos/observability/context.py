"""The request id of the work in progress, for logs and headers."""

from __future__ import annotations

import contextvars
import uuid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "llmos_request_id", default=None
)


def new_request_id() -> str:
    return uuid.uuid4().hex
