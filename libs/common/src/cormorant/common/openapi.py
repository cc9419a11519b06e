"""What the OpenAPI documents say about errors: every status an operation can answer.

The error handlers (``cormorant.common.errors``) answer a malformed request with 400, not
FastAPI's 422, and every error in one shape (``Error``). ``document_errors`` makes each
service's document say so, adds the 404 every operation with a path parameter can answer,
and routes declare the rest with ``responses=error_responses(409, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string", "description": "What went wrong and what to do."},
                "details": {"type": "object"},
            },
        }
    },
}
"""The one error body of every service: ``{"error": {"code", "message", "details"?}}``."""

ERROR_REF = {"$ref": "#/components/schemas/Error"}

DESCRIPTIONS = {
    400: "The request is malformed or a value is unusable; the message names the field.",
    401: "No credential, or one that matches nothing.",
    403: "A valid credential that does not grant this.",
    404: "Something the path names does not exist.",
    409: "The resource's state does not allow this now.",
    413: "The body is larger than the limit.",
    422: "The model's output cannot be sent (nested too deep).",
    500: "The model's predict raised, or returned something that cannot be sent.",
    502: "A service or replica behind failed while answering.",
    503: "Not ready yet (starting, or nothing to serve); retry shortly.",
    504: "A service or replica behind did not answer in time.",
}


def error_response_doc(status: int, description: str | None = None) -> dict[str, Any]:
    """The OpenAPI response object of an error ``status``."""
    return {
        "description": description or DESCRIPTIONS.get(status, "An error."),
        "content": {"application/json": {"schema": dict(ERROR_REF)}},
    }


def error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the error body; ``described`` overrides
    a description by status (``s409="..."``)."""
    return {status: error_response_doc(status, described.get(f"s{status}")) for status in statuses}


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (changed in place) saying what the error handlers really answer."""
    for item in (document.get("paths") or {}).values():
        shared = [p for p in item.get("parameters", []) if isinstance(p, dict)]
        for method, operation in item.items():
            if method == "parameters" or not isinstance(operation, dict):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            validation = responses.pop("422", None)
            parameters = [*shared, *operation.get("parameters", [])]
            if validation is not None or parameters or "requestBody" in operation:
                responses.setdefault("400", error_response_doc(400))
            if any(p.get("in") == "path" for p in parameters):
                responses.setdefault("404", error_response_doc(404))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    # FastAPI's validation schemas describe an answer no service gives.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def install_error_documentation(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) document the platform's errors."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
