"""One error hierarchy for every service, rendered as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class CormorantError(Exception):
    """Base of every error a service turns into an HTTP answer."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(CormorantError):
    """The request is malformed or its values are unusable."""

    status_code = 400
    code = "bad_request"


class Unauthorized(CormorantError):
    """No credentials, or credentials that match nothing."""

    status_code = 401
    code = "unauthorized"


class Forbidden(CormorantError):
    """Valid credentials that do not grant this action."""

    status_code = 403
    code = "forbidden"


class NotFound(CormorantError):
    """The named resource does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(CormorantError):
    """The resource's state does not allow the action now."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(CormorantError):
    """The request body exceeds a configured limit."""

    status_code = 413
    code = "payload_too_large"


class ServiceUnavailable(CormorantError):
    """A dependency or the model is not ready."""

    status_code = 503
    code = "unavailable"


class PredictError(CormorantError):
    """The user's predict (or preprocess) function raised."""

    status_code = 500
    code = "predict_error"


class InvalidPrediction(CormorantError):
    """The predict function returned something that cannot be sent as JSON."""

    status_code = 500
    code = "invalid_prediction"


def error_response(status_code: int, code: str, message: str) -> JSONResponse:
    """A JSON error response in the platform's one shape."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def data_error_message(exc: DBAPIError) -> str | None:
    """What PostgreSQL (or the driver) could not store, when ``exc`` is about a value the
    caller sent (SQLSTATE class 22: a number out of range, NUL in text...); else None."""
    driver = exc.orig
    for candidate in (driver, getattr(driver, "__cause__", None)):
        sqlstate = getattr(candidate, "sqlstate", None)
        if (isinstance(sqlstate, str) and sqlstate.startswith("22")) or (
            candidate is not None and type(candidate).__name__ == "DataError"
        ):
            return str(candidate).splitlines()[0]
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` in the platform's JSON error shape."""

    async def on_cormorant(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CormorantError)
        return JSONResponse(exc.to_body(), status_code=exc.status_code)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, "bad_request", _describe_validation(exc))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    async def on_database(_: Request, exc: Exception) -> JSONResponse:
        # A safety net: routes validate what they store, but a value PostgreSQL cannot hold
        # (an integer past int4, NUL in text) is the caller's to fix, never a 500.
        assert isinstance(exc, DBAPIError)
        reason = data_error_message(exc)
        if reason is None:
            raise exc
        log.warning("refused a value the database cannot store: %s", reason)
        message = f"a value in the request cannot be stored: {reason}"
        return error_response(400, "bad_request", message)

    app.add_exception_handler(CormorantError, on_cormorant)
    app.add_exception_handler(DBAPIError, on_database)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
