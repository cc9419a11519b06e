"""The console's routes: ``/`` → ``/console``, the login form, logout, the app and its assets.

Everything the console shows comes from ``/api/v1`` calls made by ``static/console.js``
with the session cookie; these routes only serve pages and handle the session itself.
"""

from __future__ import annotations

import hmac
import html
import string
from importlib import resources
from typing import Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response

from cormorant.gateway.auth import Credentials
from cormorant.gateway.console.session import (
    COOKIE,
    Console,
    ConsoleSessions,
    Session,
    console_of,
    same_origin,
    served_over_https,
)

router = APIRouter(include_in_schema=False)

STATIC: Final = resources.files("cormorant.gateway.console") / "static"
ASSETS: Final = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# Only our own files: no inline script, no other origin, never inside a frame.
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
MAX_LOGIN_BODY = 4096


def _template(name: str) -> string.Template:
    return string.Template((STATIC / name).read_text(encoding="utf-8"))


def _page(body: str, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="text/html", headers=SECURITY_HEADERS)


def _console(request: Request) -> Console:
    console = console_of(request)
    assert console is not None, "the console router is mounted by console.mount"
    return console


def _sessions(request: Request) -> ConsoleSessions:
    return _console(request).sessions


def _current(request: Request) -> Session | None:
    value = request.cookies.get(COOKIE)
    return _sessions(request).verify(value) if value else None


def login_page(message: str = "", status_code: int = 200) -> Response:
    """The login form, with ``message`` (an error) above it when given."""
    alert = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return _page(_template("login.html").substitute(alert=alert), status_code)


@router.get("/")
async def root() -> RedirectResponse:
    """The console is the gateway's home page."""
    return RedirectResponse("/console", status_code=307)


@router.get("/console")
async def console(request: Request) -> Response:
    """The console for a logged-in admin, the login form otherwise."""
    session = _current(request)
    if session is None:
        return login_page()
    csrf = _sessions(request).csrf_token(session)
    grafana = _console(request).grafana_url or ""
    return _page(
        _template("index.html").substitute(csrf=html.escape(csrf), grafana=html.escape(grafana))
    )


@router.post("/console/login")
async def login(request: Request) -> Response:
    """Check the admin key of the form and start a session (303 to the console)."""
    if not same_origin(request):
        return login_page("Log in from this console's own login form.", 403)
    body = await request.body()
    if len(body) > MAX_LOGIN_BODY:
        return login_page("The form is too large: paste only the admin key.", 400)
    fields = parse_qs(body.decode("utf-8", "replace"))
    key = (fields.get("key") or [""])[0].strip()
    if not key:
        return login_page(
            "Enter an admin key (cormorant keys create, or the one make up printed).", 400
        )
    credentials: Credentials = request.app.state.credentials
    principal = await credentials.identify(key)
    if principal is None or principal.kind != "admin":
        return login_page(
            "This admin key is unknown or revoked (an endpoint token is not an admin key).", 401
        )
    sessions = _sessions(request)
    response = RedirectResponse("/console", status_code=303)
    sessions.set_cookie(
        response, sessions.issue(principal.key_hash), secure=served_over_https(request)
    )
    return response


@router.post("/console/logout")
async def logout(request: Request) -> Response:
    """End the session (its CSRF token is required) and go back to the login form."""
    sessions = _sessions(request)
    session = _current(request)
    if session is not None:
        fields = parse_qs((await request.body())[:MAX_LOGIN_BODY].decode("utf-8", "replace"))
        sent = (fields.get("csrf") or [""])[0]
        if not same_origin(request) or not hmac.compare_digest(sent, sessions.csrf_token(session)):
            return login_page("Log out from the console's own Log out button.", 403)
        sessions.end(session)
    response = RedirectResponse("/console", status_code=303)
    sessions.clear_cookie(response, secure=served_over_https(request))
    return response


@router.get("/console/static/{name}")
async def asset(name: str) -> Response:
    """One of the console's own files (script, style sheet)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response("no such console file\n", status_code=404, media_type="text/plain")
    headers = {"x-content-type-options": "nosniff", "cache-control": "no-cache"}
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=headers)
