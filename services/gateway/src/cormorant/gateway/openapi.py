"""One OpenAPI document for the whole public API, merged from the services behind the gateway.

``GET /openapi.json`` is the gateway's own routes (admin keys, predict, the Open Inference
Protocol) plus the ``/api/v1`` paths of each service's ``/openapi.json``. Components of the
same name and content are shared; a name used for different content is prefixed with the
service's name (``deployer_Endpoint``) and that service's references follow. A service that
does not answer is left out (and named in ``x-cormorant-missing``) until it does. The result
is cached for ``openapi_cache_s``.

FastAPI's ``/docs`` is not served: its Swagger UI loads scripts from a CDN, which an offline
install cannot reach.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from typing import Any

import httpx
from fastapi import FastAPI

from cormorant.common.openapi import ERROR_SCHEMA, error_response_doc
from cormorant.gateway.predict import PREFIX, SUFFIX

API_PREFIX = "/api/v1"
TITLE = "Cormorant API"
_FETCH_TIMEOUT_S = 3.0

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


FORWARDED_RESPONSES: dict[str, Any] = {
    "401": error_response_doc(401, "No admin key, or an unknown or revoked one."),
    "403": error_response_doc(403, "An endpoint token where an admin key is needed."),
    "413": error_response_doc(413, "The body is larger than the gateway's limit."),
    "502": error_response_doc(502, "The service that owns this path is unreachable."),
    "504": error_response_doc(504, "The service that owns this path did not answer in time."),
}
"""What the gateway itself may answer on every management call it forwards."""

PREDICT_OPERATION: dict[str, Any] = {
    "tags": ["predict"],
    "summary": "Predict",
    "operationId": "predict",
    "description": (
        "Run the endpoint's predict function on `input_params` (a JSON list is spread as "
        "positional arguments). A generator's chunks stream back as NDJSON, or as server-sent "
        "events when the request accepts `text/event-stream`. The answer carries the headers "
        "`X-Request-ID` and `X-Cormorant-Version`."
    ),
    "security": [{"endpointToken": []}],
    "parameters": [{"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Raw bytes passed to predict as they are.",
            },
        },
    },
    "responses": {
        "200": {
            "description": "The prediction.",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        "401": _error("No endpoint token, or an unknown one."),
        "403": _error("A token of another endpoint, or an admin key."),
        "404": _error("No such endpoint."),
        "409": _error("A batch or stream endpoint, which does not answer predict."),
        "413": _error("The body is larger than the gateway's limit."),
        "422": _error("predict returned a structure nested deeper than 100 levels."),
        "500": _error("predict raised, or returned something that cannot be sent."),
        "502": _error("The replica failed while answering."),
        "503": _error("No replica is ready."),
        "504": _error("The replica did not answer within the endpoint's timeout."),
    },
}

OWN_SCHEMAS: dict[str, Any] = {
    "PredictRequest": {
        "type": "object",
        "required": ["input_params"],
        "properties": {"input_params": {"description": "The input, exactly as predict takes it."}},
    },
    "PredictResponse": {
        "type": "object",
        "properties": {
            "prediction": {"description": "What predict returned."},
            "version": {"type": "string", "description": "The model version that answered."},
            "request_id": {"type": "string", "description": "The request's id."},
        },
    },
    "Error": ERROR_SCHEMA,
}

SECURITY_SCHEMES = {
    "adminKey": {"type": "http", "scheme": "bearer", "description": "An admin key (cmk_...)."},
    "endpointToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The token of the endpoint called (cmt_...).",
    },
}


class OpenAPIDocument:
    """Builds and caches the merged document."""

    def __init__(
        self,
        app: FastAPI,
        services: Mapping[str, str],
        *,
        cache_s: float = 10.0,
    ) -> None:
        self._app = app
        self._services = {name: url.rstrip("/") for name, url in services.items()}
        self._cache_s = cache_s
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self.http: httpx.AsyncClient | None = None
        """The client that fetches the services' documents; set by the app's lifespan."""

    async def get(self) -> dict[str, Any]:
        """The merged document, rebuilt at most every ``cache_s``."""
        async with self._lock:
            if self._cached is None or time.monotonic() - self._cached_at >= self._cache_s:
                self._cached = await self._build()
                self._cached_at = time.monotonic()
            return self._cached

    async def _build(self) -> dict[str, Any]:
        names = list(self._services)
        fetched = await asyncio.gather(*(self._fetch(name) for name in names))
        merged = self.own()
        missing = []
        for name, document in zip(names, fetched, strict=True):
            if document is None:
                missing.append(name)
            else:
                merge_service(merged, name, document)
        if missing:
            merged["x-cormorant-missing"] = missing
        return merged

    def own(self) -> dict[str, Any]:
        """The gateway's own routes, with predict and the security schemes."""
        document = copy.deepcopy(self._app.openapi())
        document["info"] = {
            "title": TITLE,
            "version": document.get("info", {}).get("version", "0.1.0"),
            "description": (
                "The whole public API, served by the gateway: the management API takes "
                "`Authorization: Bearer <admin key>`, predict and `/v2/models` take the "
                "endpoint's token."
            ),
        }
        paths: dict[str, Any] = document.setdefault("paths", {})
        paths[PREFIX + "{slug}" + SUFFIX] = {"post": PREDICT_OPERATION}
        for path, item in paths.items():
            for operation in item.values():
                if path.startswith("/v2/models"):
                    operation["security"] = [{"endpointToken": []}]
                elif path.startswith("/v2/"):
                    operation["security"] = []
        components = document.setdefault("components", {})
        components.setdefault("schemas", {}).update(copy.deepcopy(OWN_SCHEMAS))
        components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
        document["security"] = [{"adminKey": []}]
        return document

    async def _fetch(self, name: str) -> dict[str, Any] | None:
        if self.http is None:
            return None
        try:
            response = await self.http.get(
                self._services[name] + "/openapi.json", timeout=_FETCH_TIMEOUT_S
            )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return document if isinstance(document, dict) else None


def merge_service(merged: dict[str, Any], service: str, document: dict[str, Any]) -> None:
    """Add ``document``'s ``/api/v1`` paths and their components to ``merged``."""
    paths = {
        path: item
        for path, item in (document.get("paths") or {}).items()
        if path == API_PREFIX or path.startswith(API_PREFIX + "/")
    }
    theirs: dict[str, dict[str, Any]] = document.get("components") or {}
    ours: dict[str, dict[str, Any]] = merged.setdefault("components", {})
    renames: dict[str, str] = {}
    for section, entries in theirs.items():
        if section == "securitySchemes" or not isinstance(entries, dict):
            continue
        existing = ours.get(section, {})
        for name, value in entries.items():
            if name in existing and existing[name] != value:
                old = f"#/components/{section}/{name}"
                renames[old] = f"#/components/{section}/{service}_{name}"
    if renames:
        paths = _rewrite(paths, renames)
        theirs = _rewrite(theirs, renames)
    for section, entries in theirs.items():
        if section == "securitySchemes" or not isinstance(entries, dict):
            continue
        target = ours.setdefault(section, {})
        for name, value in entries.items():
            ref = f"#/components/{section}/{name}"
            target[renames[ref].rsplit("/", 1)[1] if ref in renames else name] = value
    merged_paths = merged.setdefault("paths", {})
    for path, item in paths.items():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"] = {**FORWARDED_RESPONSES, **operation["responses"]}
        merged_paths.setdefault(path, {}).update(item)


def _rewrite(value: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (renames.get(v, v) if k == "$ref" and isinstance(v, str) else _rewrite(v, renames))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(item, renames) for item in value]
    return value
