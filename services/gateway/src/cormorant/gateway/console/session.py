"""Console sessions: a signed cookie that stands for an admin key, and its CSRF token.

Logging in with an admin key sets ``cormorant_session``: a nonce, an expiry and the key's
SHA-256, signed with HMAC-SHA256 (HttpOnly, SameSite=Strict, Secure over https). Nothing is
stored server-side, so any gateway sharing ``console_secret`` accepts it; the key's hash is
looked up on every request, so revoking the key ends its sessions at once. A logout
remembers the nonce until its expiry on the gateway that served it.

The cookie is accepted for the management API only from the console's own origin: a request
whose ``Origin`` or ``Sec-Fetch-Site`` says another site is refused, and a state change must
also carry ``X-CSRF-Token``, an HMAC of the session's nonce that only the console's pages hold.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import Response

from cormorant.common.errors import Forbidden, Unauthorized
from cormorant.gateway.auth import Credentials, Principal

COOKIE = "cormorant_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Past this many logged-out sessions the oldest expired ones are dropped first.
MAX_LOGGED_OUT = 10_000

LOGIN_HINT = "log in again at /console"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session cookie."""

    nonce: str
    expires: int
    key_hash: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ConsoleSessions:
    """Issues, verifies and ends console sessions."""

    def __init__(self, secret: bytes, *, ttl_s: float) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._logged_out: dict[str, int] = {}

    def _mac(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._secret, f"{purpose}:{text}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    def issue(self, key_hash: str, *, now: float | None = None) -> str:
        """A new cookie value for the admin key hashing to ``key_hash``."""
        expires = int((now or time.time()) + self.ttl_s)
        body = f"{secrets.token_urlsafe(18)}.{expires}.{key_hash}"
        return f"{body}.{self._mac('session', body)}"

    def verify(self, value: str, *, now: float | None = None) -> Session | None:
        """The session ``value`` stands for, or None if forged, expired or logged out."""
        body, _, mac = value.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        parts = body.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        nonce, expires_text, key_hash = parts
        expires = int(expires_text)
        if expires <= (now or time.time()) or nonce in self._logged_out:
            return None
        return Session(nonce, expires, key_hash)

    def csrf_token(self, session: Session) -> str:
        """The token the console's pages send with every state change of ``session``."""
        return self._mac("csrf", session.nonce)

    def end(self, session: Session) -> None:
        """Log ``session`` out on this gateway."""
        now = time.time()
        if len(self._logged_out) >= MAX_LOGGED_OUT:
            self._logged_out = {n: e for n, e in self._logged_out.items() if e > now}
            while len(self._logged_out) >= MAX_LOGGED_OUT:
                self._logged_out.pop(next(iter(self._logged_out)))
        self._logged_out[session.nonce] = session.expires

    def set_cookie(self, response: Response, value: str, *, secure: bool) -> None:
        """Put the session cookie on ``response``."""
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self.ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure,
        )

    @staticmethod
    def clear_cookie(response: Response, *, secure: bool) -> None:
        """Remove the session cookie in the browser."""
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)


def served_over_https(connection: HTTPConnection) -> bool:
    """Whether the browser reached us over https (directly or through a TLS proxy)."""
    forwarded = connection.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return connection.url.scheme == "https" or forwarded == "https"


def same_origin(connection: HTTPConnection) -> bool:
    """False when the browser says the request comes from another site or origin."""
    site = connection.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    # The host, not the scheme: a TLS proxy in front makes the origin https while we see http.
    return urlsplit(origin).netloc.lower() == connection.headers.get("host", "").lower()


@dataclass(frozen=True, slots=True)
class Console:
    """The mounted console: its sessions and what its pages show (one object, typed)."""

    sessions: ConsoleSessions
    grafana_url: str | None = None
    """Where the Grafana dashboards are, linked from the Monitoring tab; None: not set up."""


def console_of(connection: HTTPConnection) -> Console | None:
    """The app's console, or None where the console is not mounted."""
    console = getattr(connection.app.state, "console", None)
    return console if isinstance(console, Console) else None


def sessions_of(connection: HTTPConnection) -> ConsoleSessions | None:
    """The app's console sessions, or None where the console is not mounted."""
    console = console_of(connection)
    return None if console is None else console.sessions


async def cookie_principal(
    connection: HTTPConnection, credentials: Credentials
) -> Principal | None:
    """The admin behind a console session cookie, None without one; 401/403 if unusable."""
    sessions = sessions_of(connection)
    value = connection.cookies.get(COOKIE)
    if sessions is None or value is None:
        return None
    session = sessions.verify(value)
    if session is None:
        raise Unauthorized(f"the console session has expired or ended: {LOGIN_HINT}")
    if not same_origin(connection):
        raise Forbidden(
            "the console session is accepted from the console's own pages only: "
            "send Authorization: Bearer <admin key> from other origins"
        )
    method = connection.scope.get("method", "GET")
    if method not in SAFE_METHODS:
        sent = connection.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent, sessions.csrf_token(session)):
            raise Forbidden(
                f"missing or wrong {CSRF_HEADER} header for a change made with the console "
                "session: send the token of the console page (or use an admin key)"
            )
    principal = await credentials.identify_hash(session.key_hash)
    if principal is None or principal.kind != "admin":
        raise Unauthorized(f"the admin key of this console session was revoked: {LOGIN_HINT}")
    return principal
