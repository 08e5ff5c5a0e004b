"""The OpenAPI document of an app: FastAPI's, plus what depends on the settings or holds for every route.

- request limits from the settings: ``maxLength`` of ``question``/``query`` (``max_question_chars``),
  ``maximum`` of ``reader_beam_size`` (``max_reader_beam_size``) and ``k`` (``max_k``);
- ``X-Request-ID`` on every response of every route.

Per-route error statuses (:func:`service.schemas.error_responses`), the admin bearer scheme
(:data:`service.deps.AdminDep`) and ``/metrics``' content type are declared on the routes themselves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.settings import Settings

REQUEST_ID_HEADER = {"description": "the request's id: the client's X-Request-ID if it sent one, else a new one",
                     "schema": {"type": "string"}}


def _limit(schema: dict[str, Any], model: str, field: str, key: str, value: int) -> None:
    """Set ``key: value`` on ``model.field`` (on its non-null branch where the field is optional)."""
    prop = schema["components"]["schemas"][model]["properties"][field]
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch[key] = value


def openapi_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The document ``/openapi.json`` serves (built once, then cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _limit(schema, "AnswerRequest", "question", "maxLength", settings.max_question_chars)
    _limit(schema, "AnswerRequest", "reader_beam_size", "maximum", settings.max_reader_beam_size)
    _limit(schema, "RetrieveRequest", "query", "maxLength", settings.max_question_chars)
    _limit(schema, "RetrieveRequest", "k", "maximum", settings.max_k)
    for operations in schema["paths"].values():
        for op in operations.values():
            for response in op.get("responses", {}).values():
                response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER
    app.openapi_schema = schema
    return schema
