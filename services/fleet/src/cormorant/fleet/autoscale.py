"""Autoscaling on in-flight requests per replica, as Knative's KPA does.

Each gateway reports, every second, the average in-flight requests of each replica of an
endpoint (``LoadReported`` on core NATS). The observed concurrency of an endpoint is the sum
over gateways of their reports' average over a short window; the recommendation is
``ceil(observed / target)`` clamped to ``[min, max]``. The desired count is the highest
recommendation of the last ``scale_down_delay_s``: a rise takes effect at once, a fall only
once it has lasted the whole delay.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cormorant.common.events import EventDecodeError, LoadReported, decode
from cormorant.common.tasks import TaskSet
from cormorant.fleet.replica import EndpointRuntime
from cormorant.fleet.supervisor import Supervisor

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# Subscribed with core NATS: load reports are live signals, never stored (see LoadReported).
LOAD_SUBJECT = f"{LoadReported.subject_prefix}.*"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A replica count recommended at a time (seconds on a monotonic clock)."""

    at: float
    replicas: int


def recommend(concurrency: float, *, target: float, min_replicas: int, max_replicas: int) -> int:
    """Replicas needed for ``concurrency`` in-flight requests at ``target`` per replica."""
    needed = math.ceil(concurrency / target - 1e-9) if concurrency > 0 else 0
    return max(min_replicas, min(max_replicas, needed))


def decide(
    history: Sequence[Recommendation],
    recommended: int,
    *,
    now: float,
    scale_down_delay: float,
) -> tuple[int, tuple[Recommendation, ...]]:
    """The desired replicas now, and the recommendations to keep for the next decision.

    The result is the maximum recommendation within the last ``scale_down_delay`` seconds
    (this one included): scale-up is immediate, scale-down waits until every higher
    recommendation has aged out of the window.
    """
    kept = tuple(r for r in history if now - r.at < scale_down_delay)
    kept += (Recommendation(now, recommended),)
    return max(r.replicas for r in kept), kept


def decide_for(
    histories: dict[K, tuple[Recommendation, ...]],
    key: K,
    recommended: int,
    *,
    current: int,
    now: float,
    scale_down_delay: float,
) -> int:
    """``decide`` on the recommendations kept in ``histories[key]``, which it updates."""
    # Seeded with the current count: a restarted deployer does not scale down at once.
    history = histories.get(key) or (Recommendation(now, current),)
    desired, histories[key] = decide(
        history, recommended, now=now, scale_down_delay=scale_down_delay
    )
    return desired


async def run_every(interval: float, tick: Callable[[], Awaitable[None]], what: str) -> None:
    """Await ``tick`` every ``interval`` seconds until cancelled; a failed pass is logged."""
    while True:
        await asyncio.sleep(interval)
        try:
            await tick()
        except Exception:
            log.exception("%s failed", what)


def observed_concurrency(
    reports: Mapping[str, Sequence[tuple[float, float]]], *, now: float, window: float
) -> float:
    """Sum over gateways of each one's average reported concurrency within ``window`` s.

    ``reports`` maps a gateway to its ``(received at, total in-flight)`` reports.
    """
    total = 0.0
    for samples in reports.values():
        recent = [value for at, value in samples if now - at <= window]
        if recent:
            total += sum(recent) / len(recent)
    return total


@dataclass(slots=True)
class LoadTracker:
    """The recent load reports of every endpoint, per gateway."""

    window: float
    reports: dict[str, dict[str, deque[tuple[float, float]]]] = field(default_factory=dict)

    def record(self, event: LoadReported, now: float) -> None:
        """Keep ``event``'s total concurrency as received at ``now``."""
        gateways = self.reports.setdefault(event.endpoint, {})
        samples = gateways.setdefault(event.gateway, deque())
        samples.append((now, sum(event.concurrency.values())))
        self._trim(samples, now)

    def observed(self, slug: str, now: float) -> float:
        """The endpoint's observed concurrency; drops reports and gateways gone quiet."""
        gateways = self.reports.get(slug)
        if not gateways:
            return 0.0
        for name in list(gateways):
            self._trim(gateways[name], now)
            if not gateways[name]:
                del gateways[name]
        if not gateways:
            del self.reports[slug]
            return 0.0
        return observed_concurrency(gateways, now=now, window=self.window)

    def _trim(self, samples: deque[tuple[float, float]], now: float) -> None:
        while samples and now - samples[0][0] > self.window:
            samples.popleft()


class PeriodicScaler(Generic[K]):
    """Decides every ``interval`` s (``tick``) from its ``start`` to its ``stop``; keeps the
    recommendations of each scaled thing (``K``) for ``decide_for``."""

    name = "autoscaler"

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        interval: float,
        scale_down_delay: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.interval = interval
        self.scale_down_delay = scale_down_delay
        self.clock = clock or asyncio.get_running_loop().time
        self.history: dict[K, tuple[Recommendation, ...]] = {}
        self.tasks = TaskSet(self.name)

    def start_deciding(self) -> None:
        """Run ``tick`` every ``interval`` s until ``stop``; a failed pass is logged."""
        self.tasks.spawn(run_every(self.interval, self.tick, f"{self.name} pass"), name=self.name)

    async def stop(self) -> None:
        """Stop deciding."""
        await self.tasks.close()

    async def tick(self) -> None:
        """One decision for every endpoint this scaler is for."""
        raise NotImplementedError


class Autoscaler(PeriodicScaler[str]):
    """Turns load reports into desired replica counts of web endpoints."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        window: float,
        interval: float,
        scale_down_delay: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            supervisor, interval=interval, scale_down_delay=scale_down_delay, clock=clock
        )
        self.tracker = LoadTracker(window)
        self._subscription: Subscription | None = None

    async def start(self, nc: Client) -> None:
        """Follow the gateways' load reports and decide every ``interval`` s until ``stop``."""
        self._subscription = await nc.subscribe(LOAD_SUBJECT, cb=self.on_message)
        self.start_deciding()

    async def stop(self) -> None:
        """Stop deciding and following the reports."""
        await super().stop()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # a closed connection has no subscription left to remove
                log.debug("load subscription already gone: %s", exc)

    async def on_message(self, msg: Msg) -> None:
        """Record one ``LoadReported`` message from the core subscription."""
        try:
            event = decode(msg.data, msg.headers)
        except EventDecodeError as exc:
            log.warning("ignoring a load report that cannot be decoded: %s", exc)
            return
        if isinstance(event, LoadReported):
            self.tracker.record(event, self.clock())

    async def tick(self) -> None:
        """One decision for every web endpoint."""
        now = self.clock()
        live = set()
        for endpoint in list(self.supervisor.endpoints.values()):
            if endpoint.kind != "web" or endpoint.deleted:
                continue
            live.add(endpoint.slug)
            desired = self._desired(endpoint, now)
            if desired != endpoint.desired:
                await self.supervisor.scale(endpoint, desired)
        for slug in set(self.history) - live:
            del self.history[slug]

    def _desired(self, endpoint: EndpointRuntime, now: float) -> int:
        bounds = endpoint.spec.replicas
        recommended = recommend(
            self.tracker.observed(endpoint.slug, now),
            target=bounds.target,
            min_replicas=max(bounds.min, 1),
            max_replicas=bounds.max,
        )
        desired = decide_for(
            self.history,
            endpoint.slug,
            recommended,
            current=endpoint.desired,
            now=now,
            scale_down_delay=self.scale_down_delay,
        )
        return max(bounds.min, 1, min(bounds.max, desired))
