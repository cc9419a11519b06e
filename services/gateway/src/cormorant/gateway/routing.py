"""The routing table: endpoints, their traffic weights and ready replicas, and the pick.

The deployer's snapshot (``GET /internal/routing``) fills the table; ``ReplicaChanged`` and
``TrafficChanged`` events edit it in between. A request picks a version by weight, then the
replica of that version with the fewest requests in flight (ties broken at random). A request
naming its user (``X-Cormorant-User``) picks its version by a hash of that name instead of at
random, so the same user meets the same version for as long as the split holds (sticky A/B):
versions are laid out in version order, so as a canary grows, users only ever move onto it.

A route may name a shadow version (``shadow``: a version and a percent): its replicas are in
the route but never in the pick; ``shadow.py`` mirrors that share of live requests to them.

Everything here runs on the event loop without awaiting, so a request always sees one
consistent state of a route.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from cormorant.common.events import ReplicaChanged, ShadowTarget, TrafficChanged
from cormorant.common.handshake import GenerationReport
from cormorant.gateway.upstream import Pool

log = logging.getLogger(__name__)

PoolFactory = Callable[[str, int, bool], Pool]
"""Builds the connection pool of a replica from its host, port and whether it speaks TLS."""


class ReplicaInfo(BaseModel):
    """A replica as the deployer describes it in a route."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    url: str = Field(min_length=1)
    state: str = "ready"


class RouteInfo(BaseModel):
    """One endpoint's route as the deployer serves it on ``/internal/routing``."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    slug: str = Field(min_length=1)
    endpoint_id: str = ""
    kind: str = "web"
    status: str = "running"
    timeout_s: float | None = Field(default=None, gt=0)
    generation: int = 0
    weights: dict[str, int] = Field(default_factory=dict)
    replicas: list[ReplicaInfo] = Field(default_factory=list)
    shadow: ShadowTarget | None = None


class RoutingSnapshot(BaseModel):
    """The whole table: ``GET /internal/routing``."""

    model_config = ConfigDict(extra="ignore")

    endpoints: list[RouteInfo]


class Replica:
    """A ready replica: where it listens, its pool, and the requests it is answering."""

    __slots__ = (
        "area",
        "cooldown_until",
        "endpoint",
        "host_header",
        "id",
        "in_flight",
        "last_change",
        "pool",
        "predict_path",
        "url",
        "version",
        "version_bytes",
    )

    def __init__(self, endpoint: str, info: ReplicaInfo, pool_factory: PoolFactory) -> None:
        self.endpoint = endpoint
        self.id = info.id
        self.version = info.version
        self.version_bytes = info.version.encode("latin-1")
        self.url = info.url
        parts = urlsplit(info.url)
        tls = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls else 80)
        self.pool = pool_factory(host, port, tls)
        self.host_header = (parts.netloc or f"{host}:{port}").encode("latin-1")
        self.predict_path = (parts.path.rstrip("/") + "/predict").encode("latin-1")
        self.in_flight = 0
        # In-flight integrated over time since the last load report: in-flight × seconds.
        self.area = 0.0
        self.last_change = time.monotonic()
        self.cooldown_until = 0.0

    def begin(self, now: float) -> None:
        """One more request in flight."""
        self.area += self.in_flight * (now - self.last_change)
        self.last_change = now
        self.in_flight += 1

    def end(self, now: float) -> None:
        """One request fewer in flight."""
        self.area += self.in_flight * (now - self.last_change)
        self.last_change = now
        self.in_flight -= 1

    def average_in_flight(self, now: float, interval: float) -> float:
        """Time-averaged in-flight since the last call; starts the next interval."""
        area = self.area + self.in_flight * (now - self.last_change)
        self.area = 0.0
        self.last_change = now
        return area / interval if interval > 0 else float(self.in_flight)

    def matches(self, info: ReplicaInfo | ReplicaChanged) -> bool:
        """Whether ``info`` describes this replica as it is (same version, same URL)."""
        return self.version == info.version and self.url == info.url


@dataclass(slots=True, eq=False)
class Route:
    """One endpoint: its settings, weights and ready replicas, and the pick over them."""

    slug: str
    endpoint_id: str = ""
    kind: str = "web"
    status: str = "running"
    timeout_s: float = 60.0
    generation: int = -1
    weights: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)
    shadow_version: str | None = None
    """The version live requests are mirrored to; never picked for a live request."""
    shadow_share: float = 0.0
    """The fraction (0-1) of live requests mirrored to ``shadow_version``."""
    requests: int = 0
    """Requests routed since the last load report."""
    _groups: list[tuple[float, list[Replica]]] = field(default_factory=list)
    _total: float = 0.0

    def rebuild(self) -> None:
        """Recompute the pick's cumulative weights after a change of weights or replicas."""
        by_version: dict[str, list[Replica]] = {}
        for replica in self.replicas.values():
            by_version.setdefault(replica.version, []).append(replica)
        if self.weights:
            weighted = [(float(w), by_version.get(v, [])) for v, w in self.weights.items() if w > 0]
            # A version with weight but no ready replica gives its share to the others.
            weighted = [(w, group) for w, group in weighted if group]
        else:
            # No split yet (a first version): every ready replica serves, but a shadow one.
            weighted = [(1.0, group) for v, group in by_version.items() if v != self.shadow_version]
        # In version order, the same on every gateway whatever order the weights came in, so a
        # user's hash lands on the same version everywhere.
        weighted.sort(key=lambda pair: _version_key(pair[1][0].version))
        groups: list[tuple[float, list[Replica]]] = []
        total = 0.0
        for weight, group in weighted:
            total += weight
            groups.append((total, group))
        self._groups = groups
        self._total = total

    def set_shadow(self, shadow: ShadowTarget | None) -> None:
        """Mirror to ``shadow`` from now on (None: stop mirroring)."""
        self.shadow_version = shadow.version if shadow is not None else None
        self.shadow_share = shadow.percent / 100.0 if shadow is not None else 0.0

    def versions(self) -> list[str]:
        """Versions with weight or with ready replicas, in a stable order."""
        names = set(self.weights) | {r.version for r in self.replicas.values()}
        return sorted(names, key=_version_key)

    def pick(
        self,
        now: float,
        exclude: frozenset[Replica] = frozenset(),
        *,
        version: str | None = None,
        user: bytes | None = None,
    ) -> Replica | None:
        """A replica for the next request, or None when no allowed replica is ready.

        ``version`` pins the request to that version's replicas, whatever its weight (a
        canary can be tried before it takes any traffic). ``user`` (the ``X-Cormorant-User``
        header) picks the version by its hash rather than at random.
        """
        if version is not None:
            pinned = [r for r in self.replicas.values() if r.version == version]
            return _least_loaded(pinned, now, exclude) if pinned else None
        groups = self._groups
        if not groups:
            return None
        if len(groups) == 1:
            group = groups[0][1]
        else:
            fraction = random.random() if user is None else user_point(user)
            point = fraction * self._total
            group = groups[-1][1]
            for bound, candidates in groups:
                if point < bound:
                    group = candidates
                    break
        chosen = _least_loaded(group, now, exclude)
        if chosen is None and exclude:
            # The drawn version has no replica left to try: any weighted replica will do.
            chosen = _least_loaded([r for _, g in groups for r in g], now, exclude)
        return chosen


def user_point(user: bytes) -> float:
    """Where ``user`` falls in [0, 1): a stable hash, the same on every gateway and run."""
    digest = hashlib.blake2b(user, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _version_key(version: str) -> tuple[int, str]:
    # Version labels are numbers: "9" before "10".
    return (len(version), version)


def _least_loaded(
    replicas: list[Replica], now: float, exclude: frozenset[Replica]
) -> Replica | None:
    if len(replicas) == 1 and not exclude:
        only = replicas[0]
        return only
    best: Replica | None = None
    cooling: Replica | None = None
    ties = 0
    for replica in replicas:
        if replica in exclude:
            continue
        if replica.cooldown_until > now:
            # A replica that just refused a connection is the last resort, not a candidate.
            if cooling is None or replica.in_flight < cooling.in_flight:
                cooling = replica
            continue
        if best is None or replica.in_flight < best.in_flight:
            best = replica
            ties = 1
        elif replica.in_flight == best.in_flight:
            ties += 1
            if random.randrange(ties) == 0:
                best = replica
    return best if best is not None else cooling


class RoutingTable:
    """Every routed endpoint, kept current by snapshots and events."""

    def __init__(self, pool_factory: PoolFactory, *, default_timeout_s: float = 60.0) -> None:
        self.routes: dict[str, Route] = {}
        self.loaded = False
        """Whether a full snapshot was applied once: until then the gateway is not ready."""
        self.retired: list[Replica] = []
        """Replicas taken out of routing with requests still in flight (for load reports)."""
        self._pool_factory = pool_factory
        self._default_timeout_s = default_timeout_s
        # Replica id → (monotonic time, routable) of the last event about it, so that a
        # snapshot fetched before that event does not undo it.
        self._events: dict[str, tuple[float, bool]] = {}
        # Slug → monotonic time it was removed, for the same reason.
        self._removed: dict[str, float] = {}

    def apply_snapshot(self, snapshot: RoutingSnapshot, fetched_at: float) -> None:
        """Replace the table by a full snapshot whose fetch started at ``fetched_at``."""
        seen = set()
        for info in snapshot.endpoints:
            self.apply_route(info, fetched_at)
            seen.add(info.slug)
        for slug in [s for s in self.routes if s not in seen]:
            self.remove_route(slug)
        # Events older than the snapshot are part of it.
        self._events = {k: v for k, v in self._events.items() if v[0] >= fetched_at}
        self._removed = {k: v for k, v in self._removed.items() if v >= fetched_at}
        self.loaded = True

    def apply_route(self, info: RouteInfo, fetched_at: float) -> None:
        """Create or update one endpoint's route from the deployer's description."""
        removed = self._removed.get(info.slug)
        if removed is not None and removed > fetched_at:
            return  # deleted after this description was fetched
        route = self.routes.get(info.slug)
        if route is None:
            route = self.routes[info.slug] = Route(info.slug)
        route.endpoint_id = info.endpoint_id
        route.kind = info.kind
        route.status = info.status
        route.timeout_s = info.timeout_s or self._default_timeout_s
        if info.generation >= route.generation:
            route.weights = dict(info.weights)
            route.set_shadow(info.shadow)
            route.generation = info.generation
        wanted: dict[str, Replica] = {}
        for replica_info in info.replicas:
            if (
                replica_info.state != "ready"
                or self._newer_event(replica_info.id, fetched_at) is False
            ):
                continue  # not ready, or taken out by an event newer than the snapshot
            existing = route.replicas.get(replica_info.id)
            if existing is not None and existing.matches(replica_info):
                wanted[replica_info.id] = existing
            else:
                wanted[replica_info.id] = Replica(info.slug, replica_info, self._pool_factory)
        for replica_id, replica in route.replicas.items():
            if wanted.get(replica_id) is replica:
                continue
            if replica_id not in wanted and self._newer_event(replica_id, fetched_at):
                wanted[replica_id] = replica  # made ready by an event newer than the snapshot
            else:
                self._retire(replica)
        route.replicas = wanted
        route.rebuild()

    def remove_route(self, slug: str) -> None:
        """Stop routing to an endpoint (deleted, or gone from the deployer's table)."""
        self._removed[slug] = time.monotonic()
        route = self.routes.pop(slug, None)
        if route is not None:
            for replica in route.replicas.values():
                self._retire(replica)

    def apply_replica(self, event: ReplicaChanged) -> bool:
        """Apply a replica's state change; False when the route must be fetched instead."""
        routable = event.state == "ready" and event.url is not None
        self._events[event.replica_id] = (time.monotonic(), routable)
        route = self.routes.get(event.endpoint)
        if route is None or (event.state == "ready" and event.url is None):
            return False
        existing = route.replicas.get(event.replica_id)
        if routable:
            if existing is not None and existing.matches(event):
                return True
            if existing is not None:
                self._retire(existing)
            assert event.url is not None
            info = ReplicaInfo(id=event.replica_id, version=event.version, url=event.url)
            route.replicas[event.replica_id] = Replica(route.slug, info, self._pool_factory)
        elif existing is None:
            return True
        else:
            # Draining, stopped or crashed: out of the pick at once; requests in flight finish.
            del route.replicas[event.replica_id]
            self._retire(existing)
        route.rebuild()
        return True

    def apply_traffic(self, event: TrafficChanged) -> bool:
        """Apply a new traffic split; False when the route must be fetched instead."""
        route = self.routes.get(event.endpoint)
        if route is None:
            return False
        if event.generation >= route.generation:
            route.weights = dict(event.weights)
            route.set_shadow(event.shadow)
            route.generation = event.generation
            route.rebuild()
        return True

    def report(self, slug: str, gateway: str) -> GenerationReport:
        """The generation of ``slug`` this table routes by and its requests in flight per version
        (the deployer's handshake before it stops a version's replicas)."""
        route = self.routes.get(slug)
        in_flight: dict[str, int] = {}
        replicas = [*(route.replicas.values() if route else ()), *self.retired]
        for replica in replicas:
            if replica.endpoint == slug and replica.in_flight:
                in_flight[replica.version] = in_flight.get(replica.version, 0) + replica.in_flight
        generation = route.generation if route is not None else -1
        return GenerationReport(
            gateway=gateway, endpoint=slug, generation=generation, in_flight=in_flight
        )

    def all_replicas(self) -> Iterable[Replica]:
        """Every routed replica, then the retired ones still tracked."""
        for route in self.routes.values():
            yield from route.replicas.values()
        yield from self.retired

    def close(self) -> None:
        """Close every replica's idle connections."""
        for replica in self.all_replicas():
            replica.pool.close()

    def _newer_event(self, replica_id: str, fetched_at: float) -> bool | None:
        # Whether an event after ``fetched_at`` made the replica routable; None if none came.
        last = self._events.get(replica_id)
        if last is None or last[0] <= fetched_at:
            return None
        return last[1]

    def _retire(self, replica: Replica) -> None:
        replica.pool.close()
        if replica.in_flight or replica.area:
            self.retired.append(replica)
