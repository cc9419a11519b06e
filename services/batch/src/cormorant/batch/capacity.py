"""Capacity for jobs: replicas asked of the deployer, the ready ones read from the routing feed.

A job holds its endpoint while it runs. The first holder asks the deployer for replicas with
``PUT /internal/endpoints/{slug}/demand {replicas, ttl_s}`` and the demand is renewed while any
job of the endpoint runs; when the last one ends it is renewed once more for
``idle_timeout_s``, after which the deployer scales the endpoint back to 0 (as it does when
this service stops renewing at all, e.g. because it stopped). The ready replicas come from
what the gateway follows: the deployer's routing snapshot (``GET /internal/routing/{slug}``),
then ``ReplicaChanged`` events on core NATS, read again from the snapshot whenever the wait
for a replica is quiet for a second (an event lost in a reconnect is not waited for forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from cormorant.batch.routing import EndpointState, Route
from cormorant.common.errors import CormorantError
from cormorant.common.events import EventDecodeError, ReplicaChanged, decode

log = logging.getLogger(__name__)

HOLD_TTL_S = 30.0
"""How long a demand lasts while jobs run; renewed every third of it."""
_QUIET_S = 1.0
_CALL_TIMEOUT_S = 10.0


class NoCapacity(CormorantError):
    """The endpoint's replicas cannot be had; the message becomes the job's ``error``."""


class DeployerApi:
    """The two internal calls of the deployer a job needs."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url.rstrip("/")

    async def demand(self, slug: str, replicas: int, ttl_s: float) -> EndpointState | None:
        """Ask for ``replicas`` for ``ttl_s`` s; the endpoint's state, None once it is gone."""
        try:
            response = await self._http.put(
                f"{self._url}/internal/endpoints/{slug}/demand",
                json={"replicas": replicas, "ttl_s": ttl_s},
                timeout=_CALL_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            raise NoCapacity(
                f"the deployer did not answer at {self._url} ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise NoCapacity(f"the deployer refused replicas for {slug!r}: {_message(response)}")
        try:
            return EndpointState.model_validate_json(response.content)
        except ValidationError as exc:
            raise NoCapacity(
                f"the deployer's answer for {slug!r} is not understood: {exc}"
            ) from exc

    async def route(self, slug: str) -> Route | None:
        """The endpoint's route (its ready replicas), None once it is gone; ``ValidationError``
        when the answer is not a route."""
        response = await self._http.get(
            f"{self._url}/internal/routing/{slug}", timeout=_CALL_TIMEOUT_S
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return Route.model_validate_json(response.content)


class ReadyReplicas:
    """The ready replicas of one endpoint, by id: the snapshot, edited by events."""

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self._ready: dict[str, str] = {}
        self._since_fetch: dict[str, str | None] | None = None
        self._changed = asyncio.Event()

    def urls(self) -> list[tuple[str, str]]:
        """``(replica id, url)`` of every ready replica."""
        return list(self._ready.items())

    def apply(self, event: ReplicaChanged) -> None:
        """A replica's new state: ready with a URL joins, any other state leaves."""
        url = event.url if event.state == "ready" else None
        if self._since_fetch is not None:
            self._since_fetch[event.replica_id] = url
        self._set(event.replica_id, url)

    def fetching(self) -> None:
        """A snapshot is being read: the events from now on are newer than it."""
        self._since_fetch = {}

    def apply_route(self, route: Route) -> None:
        """Replace the picture by the snapshot, then re-apply the events that came meanwhile."""
        ready = route.ready()
        for replica_id, url in (self._since_fetch or {}).items():
            if url:
                ready[replica_id] = url
            else:
                ready.pop(replica_id, None)
        self._since_fetch = None
        self._ready = ready
        self._changed.set()

    async def changed(self, timeout: float) -> bool:  # noqa: ASYNC109 - a poll interval
        """Whether the replicas changed within ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def _set(self, replica_id: str, url: str | None) -> None:
        if url:
            self._ready[replica_id] = url
        else:
            self._ready.pop(replica_id, None)
        self._changed.set()


class Hold:
    """One endpoint held for its jobs: its demand kept fresh, its ready replicas followed."""

    def __init__(self, capacity: Capacity, slug: str, replicas: int) -> None:
        self.slug = slug
        self.replicas = replicas
        self.view = ReadyReplicas(slug)
        self.users = 0
        self.status = "deploying"
        self.reason: str | None = None
        self.gone = False
        self._capacity = capacity
        self._subscription: Any = None
        self._renewing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Follow the replicas, ask for them, and keep asking while held."""
        subject = f"{ReplicaChanged.subject_prefix}.{self.slug}"
        self._subscription = await self._capacity.nc.subscribe(subject, cb=self._on_message)
        try:
            await self.renew(HOLD_TTL_S)
            await self.load()
        except BaseException:
            await self._unsubscribe()
            raise
        self._renewing = asyncio.create_task(self._renew_forever(), name=f"demand-{self.slug}")

    async def close(self, *, idle_s: float | None) -> None:
        """Stop renewing; with ``idle_s``, a last demand that lapses ``idle_s`` s from now."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        await self._unsubscribe()
        if idle_s is None or self.gone:
            return
        try:
            if idle_s > 0:
                await self.renew(idle_s)
            else:
                await self._capacity.deployer.demand(self.slug, 0, HOLD_TTL_S)
        except NoCapacity as exc:
            log.warning("%s: the last demand was not sent (%s)", self.slug, exc.message)

    async def renew(self, ttl_s: float) -> None:
        """Ask the deployer for the replicas for ``ttl_s`` s more; note the endpoint's state."""
        answer = await self._capacity.deployer.demand(self.slug, self.replicas, ttl_s)
        if answer is None:
            self.gone = True
            return
        self.status = answer.status
        self.reason = answer.reason

    async def load(self) -> None:
        """Read the ready replicas from the deployer's routing snapshot."""
        self.view.fetching()
        try:
            route = await self._capacity.deployer.route(self.slug)
        except (httpx.HTTPError, ValidationError) as exc:
            log.warning("%s: routing snapshot not read (%s)", self.slug, exc)
            return
        if route is None:
            self.gone = True
            return
        self.view.apply_route(route)

    async def wait_ready(self, timeout: float) -> list[tuple[str, str]]:  # noqa: ASYNC109
        """The ready replicas, once there is one; ``NoCapacity`` saying why there is none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (urls := self.view.urls()):
            if self.gone:
                raise NoCapacity(f"endpoint {self.slug!r} was deleted")
            if self.status == "failed":
                raise NoCapacity(f"the endpoint's replicas failed to start: {self.reason}")
            left = deadline - loop.time()
            if left <= 0:
                raise NoCapacity(f"no replica of {self.slug!r} became ready within {timeout:g} s")
            if not await self.view.changed(min(_QUIET_S, left)):
                await self.renew(HOLD_TTL_S)
                await self.load()
        return urls

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(HOLD_TTL_S / 3)
            try:
                await self.renew(HOLD_TTL_S)
            except NoCapacity as exc:
                # The replicas stay for the rest of the last demand: the next renewal may pass.
                log.warning("%s: demand not renewed (%s)", self.slug, exc.message)

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = decode(msg.data, msg.headers)
        except EventDecodeError as exc:
            log.warning("ignoring a message on %s: %s", msg.subject, exc)
            return
        if isinstance(event, ReplicaChanged) and event.endpoint == self.slug:
            self.view.apply(event)

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
        except Exception as exc:  # a closed connection has no subscription left to remove
            log.debug("replica subscription of %s already gone: %s", self.slug, exc)


class Capacity:
    """Holds endpoints for their jobs: one demand per endpoint, however many jobs run on it."""

    def __init__(self, deployer: DeployerApi, nc: Client, *, idle_timeout_s: float) -> None:
        self.deployer = deployer
        self.nc = nc
        self.idle_timeout_s = idle_timeout_s
        self.closing = False
        self._holds: dict[str, Hold] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, slug: str, replicas: int) -> AsyncIterator[Hold]:
        """The endpoint held (its replicas asked for and followed) while the block runs."""
        async with self._lock:
            held = self._holds.get(slug)
            if held is None:
                held = Hold(self, slug, replicas)
                await held.open()
                self._holds[slug] = held
            held.users += 1
        try:
            yield held
        finally:
            held.users -= 1
            if held.users == 0 and self._holds.get(slug) is held:
                del self._holds[slug]
                # A stopping service sends no last demand: the running one lapses by itself.
                await held.close(idle_s=None if self.closing else self.idle_timeout_s)

    async def close(self) -> None:
        """Stop renewing every demand (they lapse within ``HOLD_TTL_S``)."""
        self.closing = True
        for held in list(self._holds.values()):
            await held.close(idle_s=None)
        self._holds.clear()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"
