"""Keeping the routing table and the credential cache current.

``RoutingSync`` loads the deployer's routing snapshot at start (retrying until the deployer
answers), again on every NATS reconnect, every ``routing_refresh_s`` as a safety net, and one
endpoint at a time when an ``EndpointChanged`` event (or an event about an endpoint the table
does not know yet) asks for it. ``EventFollower`` applies ``ReplicaChanged`` and
``TrafficChanged`` straight from core NATS: the gateway needs live updates, not JetStream's
replay of the past.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from cormorant.common.bus import close, connect
from cormorant.common.events import (
    EndpointChanged,
    Event,
    EventDecodeError,
    ReplicaChanged,
    TrafficChanged,
    decode,
)
from cormorant.common.handshake import GENERATION_SUBJECT, GenerationQuery
from cormorant.common.retry import Backoff
from cormorant.gateway.auth import Credentials
from cormorant.gateway.metrics import GatewayMetrics
from cormorant.gateway.routing import RouteInfo, RoutingSnapshot, RoutingTable

log = logging.getLogger(__name__)

SUBJECTS = (
    EndpointChanged.subject_filter(),
    ReplicaChanged.subject_filter(),
    TrafficChanged.subject_filter(),
)
_RELOAD_BACKOFF = Backoff(initial=0.1, cap=2.0)
"""Between failed loads: the deployer is restarting or not up yet."""


class RoutingSync:
    """Loads routes from the deployer's internal API when asked, and periodically."""

    def __init__(
        self,
        table: RoutingTable,
        deployer: httpx.AsyncClient,
        metrics: GatewayMetrics,
        *,
        refresh_s: float = 30.0,
    ) -> None:
        self.table = table
        self._http = deployer
        self._metrics = metrics
        self._refresh_s = refresh_s
        self._wake = asyncio.Event()
        self._full_due = True
        self._slugs: set[str] = set()

    def request_full(self) -> None:
        """Reload the whole table soon."""
        self._full_due = True
        self._wake.set()

    def request_endpoint(self, slug: str) -> None:
        """Reload one endpoint's route soon."""
        self._slugs.add(slug)
        self._wake.set()

    async def run(self) -> None:
        """Serve reload requests until cancelled; failed loads are retried with backoff."""
        failures = 0
        while True:
            self._wake.clear()
            if await self._sync():
                failures = 0
            else:
                failures += 1
                await asyncio.sleep(_RELOAD_BACKOFF.delay(failures))
                continue
            if self._full_due or self._slugs:
                continue
            try:
                async with asyncio.timeout(self._refresh_s):
                    await self._wake.wait()
            except TimeoutError:
                self._full_due = True

    async def _sync(self) -> bool:
        if self._full_due:
            self._full_due = False
            self._slugs.clear()
            if not await self._load_all():
                self._full_due = True
                return False
            return True
        ok = True
        slugs, self._slugs = self._slugs, set()
        for slug in slugs:
            if not await self._load_one(slug):
                self._slugs.add(slug)
                ok = False
        return ok

    async def _load_all(self) -> bool:
        fetched_at = time.monotonic()
        try:
            response = await self._http.get("/internal/routing")
            response.raise_for_status()
            snapshot = RoutingSnapshot.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as exc:
            self._metrics.routing_loads.labels("all", "failed").inc()
            level = logging.WARNING if self.table.loaded else logging.INFO
            log.log(level, "routing table not loaded from the deployer: %s", _describe(exc))
            return False
        first = not self.table.loaded
        self.table.apply_snapshot(snapshot, fetched_at)
        self._metrics.routing_loads.labels("all", "ok").inc()
        if first:
            log.info("routing table loaded: %d endpoint(s)", len(snapshot.endpoints))
        return True

    async def _load_one(self, slug: str) -> bool:
        fetched_at = time.monotonic()
        try:
            response = await self._http.get(f"/internal/routing/{slug}")
            if response.status_code == 404:
                self.table.remove_route(slug)
                self._metrics.routing_loads.labels("endpoint", "ok").inc()
                return True
            response.raise_for_status()
            info = RouteInfo.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as exc:
            self._metrics.routing_loads.labels("endpoint", "failed").inc()
            log.warning("route of %r not loaded from the deployer: %s", slug, _describe(exc))
            return False
        self.table.apply_route(info, fetched_at)
        self._metrics.routing_loads.labels("endpoint", "ok").inc()
        return True


Attachment = Callable[[Client], AbstractAsyncContextManager[None]]
"""Something that uses the connection while it is open (the prediction log's publisher)."""


class EventFollower:
    """The gateway's NATS connection: follows routing events, carries load reports and the
    prediction log of unanswered requests."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        table: RoutingTable,
        sync: RoutingSync,
        credentials: Credentials,
        attach: Attachment | None = None,
    ) -> None:
        self._url = url
        self._name = name
        self._table = table
        self._sync = sync
        self._credentials = credentials
        self._attach = attach
        self.nc: Client | None = None
        self.subscribed = asyncio.Event()
        self._closing = False

    async def run(self) -> None:
        """Connect (waiting for NATS as long as it takes), subscribe, and follow until cancelled."""
        self._closing = False
        nc = await self._connect()
        try:
            for subject in SUBJECTS:
                await nc.subscribe(subject, cb=self._on_message)
            await nc.subscribe(GENERATION_SUBJECT, cb=self._on_generation_query)
            await nc.flush()
            self.nc = nc
            # Events published before the subscriptions existed are in the deployer's state.
            self._sync.request_full()
            self.subscribed.set()
            attached = self._attach(nc) if self._attach else contextlib.nullcontext()
            async with attached:
                await asyncio.Event().wait()
        finally:
            self.nc = None
            self._closing = True
            await close(nc)

    async def _connect(self) -> Client:
        attempt = asyncio.ensure_future(
            connect(
                self._url,
                name=self._name,
                reconnected_cb=self._on_reconnected,
                disconnected_cb=self._on_disconnected,
            )
        )
        try:
            # wait() leaves the attempt alone when we are cancelled: see below.
            await asyncio.wait({attempt})
        except asyncio.CancelledError:
            # nats-py retries the first connection in a loop that catches every Exception,
            # and on Python 3.11 a cancellation landing as a connection attempt fails comes
            # out of its wait_for as that failure: one cancel can be lost. Repeat until one
            # sticks.
            while not attempt.done():
                attempt.cancel()
                await asyncio.wait({attempt}, timeout=0.05)
            if not attempt.cancelled() and attempt.exception() is None:
                await close(attempt.result())
            raise
        return attempt.result()

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats %r: disconnected, reconnecting", self._name)

    async def _on_reconnected(self) -> None:
        log.info("nats %r: reconnected; reloading the routing table", self._name)
        # Events sent while disconnected are lost to a core subscription.
        self._sync.request_full()

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = decode(msg.data, msg.headers)
        except EventDecodeError as exc:
            log.warning("ignoring a message on %s: %s", msg.subject, exc)
            return
        self.apply(event)

    async def _on_generation_query(self, msg: Msg) -> None:
        # The deployer waits for every gateway's answer before it stops a version's replicas.
        if not msg.reply:
            return
        try:
            query = GenerationQuery.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring a generation query: %s", exc.errors()[0]["msg"])
            return
        report = self._table.report(query.endpoint, self._name)
        await msg.respond(report.model_dump_json().encode())

    def apply(self, event: Event) -> None:
        """Apply one decoded event to the table and the credential cache."""
        if isinstance(event, ReplicaChanged):
            if not self._table.apply_replica(event):
                self._sync.request_endpoint(event.endpoint)
        elif isinstance(event, TrafficChanged):
            if not self._table.apply_traffic(event):
                self._sync.request_endpoint(event.endpoint)
        elif isinstance(event, EndpointChanged):
            self._credentials.endpoint_changed(event)
            if event.change == "deleted":
                self._table.remove_route(event.endpoint)
            else:
                self._sync.request_endpoint(event.endpoint)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}"
    if isinstance(exc, ValidationError):
        return f"unexpected routing JSON: {exc.errors()[0]['msg']}"
    return f"{type(exc).__name__}: {exc}"
