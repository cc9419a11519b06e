"""Test support: a real SMTP server (aiosmtpd) and a real webhook receiver on 127.0.0.1.

Used by the Alerts tests and by end-to-end tests of triggers. Requires the ``aiosmtpd`` and
``asgi-lifespan`` development dependencies. Waits poll with deadlines; nothing here sleeps
for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from asgi_lifespan import LifespanManager

from cormorant.alerts.app import create_app
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.db import asyncpg_dsn
from cormorant.common.internal import InternalAuth
from cormorant.common.ports import free_port
from cormorant.devstack.testing.service import ServiceUnderTest
from cormorant.devstack.testing.waits import eventually as eventually

SLUG = "iris"
"""The endpoint the Alerts tests put their triggers on."""

TRIGGERS_PATH = f"/api/v1/endpoints/{SLUG}/triggers"
"""Where the endpoint ``SLUG``'s triggers are created and listed."""


def trigger_body(**changes: Any) -> dict[str, Any]:
    """A valid trigger: accuracy under 0.8 on three values, evaluated every second, e-mailing
    the team; with ``changes``."""
    return {
        "title": "Accuracy dropped",
        "severity": "critical",
        "tag": "accuracy",
        "comparison": "lt",
        "value": 0.8,
        "every": "1s",
        "min_events": 3,
        "action": {"email": ["team@example.org"]},
        **changes,
    }


class Mailbox:
    """What an aiosmtpd server accepted.

    ``hold()`` models a delivery in flight that the server never accepts: messages arriving
    while it is on wait, unanswered, and are refused with a temporary error (451, the sender
    should try again) once ``release()`` is called, so only a later attempt can deliver.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.logins: list[Any] = []
        """Who had logged in when each message was sent (None: nobody)."""
        self.arrived: list[float] = []
        self.in_flight = 0
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message and accept it; refuse it after a hold."""
        if not self._open.is_set():
            with self._lock:
                self.in_flight += 1
            try:
                # The server runs in its own thread's loop: wait for the release in another.
                await asyncio.to_thread(self._open.wait)
            finally:
                with self._lock:
                    self.in_flight -= 1
            return "451 4.3.0 not accepted, try again"
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        with self._lock:
            self.messages.append(message_from_bytes(content))
            self.arrived.append(time.monotonic())
            self.logins.append(session.auth_data if session.authenticated else None)
        return "250 OK"

    def hold(self) -> None:
        """Leave the next messages in flight until ``release``, then refuse them."""
        self._open.clear()

    def release(self) -> None:
        """Accept messages again."""
        self._open.set()

    def firings(self) -> list[str]:
        """The firing id of each message accepted, in arrival order."""
        with self._lock:
            return [str(m["X-Cormorant-Firing"]) for m in self.messages]


@contextmanager
def smtp_server(login: tuple[str, str] | None = None) -> Iterator[tuple[Mailbox, int]]:
    """An aiosmtpd server on 127.0.0.1 and a free port: its mailbox and the port. With
    ``login`` (user, password) it accepts mail only after that login (AUTH over plain TCP)."""
    mailbox = Mailbox()
    port = free_port()
    options: dict[str, Any] = {}
    if login is not None:

        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            given = (data.login.decode(), data.password.decode())
            ok = isinstance(data, LoginPassword) and given == login
            return AuthResult(success=ok, handled=False, auth_data=given[0] if ok else None)

        # Offered without TLS (a test on 127.0.0.1); a message records who logged in.
        options = {"auth_require_tls": False, "authenticator": authenticate}
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()  # returns once the server answers
    try:
        yield mailbox, port
    finally:
        mailbox.release()
        controller.stop()


@dataclass
class Received:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server recording POSTs; ``statuses`` are answered in turn, then 200."""

    url: str
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """An HTTP server on 127.0.0.1 that records every POST."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    receiver = WebhookReceiver(url=f"http://127.0.0.1:{server.server_port}/hook")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads ``received``."""

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


class Metrics:
    """Writes metric rows as predictlog stores them."""

    def __init__(self, database_url: str, endpoint_id: uuid.UUID) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.endpoint_id = endpoint_id

    async def log(self, key: str, *values: float) -> None:
        """Store ``values`` of ``key`` as logged now."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.executemany(
                "INSERT INTO metrics (endpoint_id, version, key, value, logged_at, event_id)"
                " VALUES ($1, 1, $2, $3, $4, $5)",
                [(self.endpoint_id, key, v, datetime.now(UTC), uuid.uuid4().hex) for v in values],
            )
        finally:
            await conn.close()


@asynccontextmanager
async def evaluation_held(conn: asyncpg.Connection, *, within: float) -> AsyncIterator[None]:
    """Lock the metrics table on ``conn`` and enter once an evaluation waits on it (its read
    of the values held up, mid-evaluation); the lock is released when the block ends."""
    blocker = conn.transaction()
    await blocker.start()
    try:
        await conn.execute("LOCK TABLE metrics IN ACCESS EXCLUSIVE MODE")

        async def evaluating() -> bool:
            # The evaluator is the one reader of metrics waiting for this lock: predictlog
            # would only wait with a new value to store, and the tests make no prediction now.
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'metrics'::regclass"
            )
            return bool(waiting)

        await eventually(evaluating, within=within, what="an evaluation waiting on the values")
        yield
    finally:
        await blocker.rollback()


@asynccontextmanager
async def running(settings: AlertsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The service in-process (evaluator and outbox included) and an HTTP client of it."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        auth = InternalAuth(settings.internal_secret)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://alerts", auth=auth
        ) as client:
            yield client


def _secret(settings: AlertsSettings) -> str:
    return settings.internal_secret.get_secret_value() if settings.internal_secret else ""


class AlertsProcess(ServiceUnderTest):
    """``python -m cormorant.alerts`` as a real process, killable like a crash; ``auth``
    carries the internal credential its API asks for."""

    def __init__(self, settings: AlertsSettings, log_path: Path) -> None:
        env = {
            "CORMORANT_NATS_URL": settings.nats_url,
            "CORMORANT_DATABASE_URL": settings.database_url,
            "CORMORANT_INTERNAL_SECRET": _secret(settings),
            "CORMORANT_ALERTS_SMTP_PORT": str(settings.smtp_port),
            "CORMORANT_ALERTS_EVALUATION_TICK_S": str(settings.evaluation_tick_s),
            "CORMORANT_ALERTS_RETRY_BACKOFF_S": str(settings.retry_backoff_s),
        }
        super().__init__("alerts", env, log_path, stop_timeout=35)
        self.auth = InternalAuth(settings.internal_secret)
