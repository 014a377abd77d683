"""Which methods a path allows, by the most specific operations that match it.

The registry's routes take a whole reference as one path parameter
(``/api/models/{ref:path}``), so that path also matches the paths of the more
specific routes under it (``/api/models/{ref}/estimate``). For a path, the
operations that count are those of the OpenAPI paths matching it with the most
literal segments: their methods are the ``Allow`` of a 405 (exactly what the
schema documents), and a catch-all route refuses a method they do not have
(``DELETE /api/models/m/estimate`` is a 405, not a delete of a model named
``m/estimate``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@lru_cache(maxsize=256)
def _pattern(template: str) -> tuple[re.Pattern[str], int]:
    parts = re.split(r"(\{[^}]+\})", template)
    regex = "".join(".+" if p.startswith("{") else re.escape(p) for p in parts)
    literals = sum(1 for seg in template.split("/") if seg and "{" not in seg)
    return re.compile(f"^{regex}$"), literals


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    matching = []
    for template, operations in paths.items():
        regex, literals = _pattern(template)
        if regex.match(path):
            matching.append((literals, {m.upper() for m in operations if m in _METHODS}))
    if not matching:
        return []
    best = max(literals for literals, _ in matching)
    return sorted({m for literals, methods in matching if literals == best for m in methods})


def method_not_allowed(app: FastAPI, path: str) -> HTTPException:
    return HTTPException(405, "Method Not Allowed",
                         headers={"allow": ", ".join(allowed_methods(app, path))})


def only_specific(request: Request) -> None:
    """Raise a 405 when a more specific route owns this path but not this method."""
    methods = allowed_methods(request.app, request.url.path)
    if methods and request.method not in methods:
        raise method_not_allowed(request.app, request.url.path)
