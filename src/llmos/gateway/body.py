"""Request bodies of the hot endpoints: parsed by pydantic straight from the bytes.

FastAPI's own body handling (JSON decode, then validation of the Python objects,
through its dependency machinery) costs a few hundred microseconds per request,
and the gateway's event loop takes requests one after another: at a burst of 16
that spreads their arrival at the engine over tens of milliseconds. The routes
take the raw request, validate with ``model_validate_json`` and raise the same
``RequestValidationError`` FastAPI would, so errors keep their 400 shape. The
OpenAPI schema still names the body model (see ``openapi_body``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Body = TypeVar("Body", bound=BaseModel)

BODY_MODELS: list[type[BaseModel]] = []
"""Models named by ``openapi_body``; the app adds their schemas to the components."""


async def parse_body(request: Request, model: type[Body]) -> Body:
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses ``model`` itself."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def component_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to ``model``'s schema, which the app adds to the components."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def component_schemas() -> dict[str, Any]:
    """The JSON schemas of the body models and everything they refer to."""
    schemas: dict[str, Any] = {}
    for model in BODY_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
