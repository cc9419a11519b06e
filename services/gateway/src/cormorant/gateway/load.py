"""Load reports for the autoscaler: time-averaged in-flight requests per replica.

Each replica integrates its in-flight count over time at every change (one multiply-add per
request start and end, see ``routing.Replica``). Every ``load_report_s`` the reporter turns
the integral into an average and publishes one ``LoadReported`` per endpoint that had traffic
or requests in flight, on core NATS: a live signal, worthless once stale, so never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client

from cormorant.common.events import LoadReported
from cormorant.gateway.routing import Replica, RoutingTable

log = logging.getLogger(__name__)


class LoadReporter:
    """Publishes this gateway's view of each endpoint's load every interval."""

    def __init__(
        self,
        table: RoutingTable,
        connection: Callable[[], Client | None],
        *,
        gateway_id: str,
        interval_s: float = 1.0,
    ) -> None:
        self._table = table
        self._connection = connection
        self._gateway_id = gateway_id
        self._interval_s = interval_s

    async def run(self) -> None:
        """Report every interval until cancelled."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._interval_s)
            now = time.monotonic()
            reports = self.collect(now, now - last)
            last = now
            nc = self._connection()
            if nc is None or not nc.is_connected:
                continue
            for report in reports:
                try:
                    await nc.publish(report.subject, report.encode(), headers=report.headers())
                except Exception as exc:  # a lost report is replaced by the next one
                    log.debug("load report not sent: %s", exc)

    def collect(self, now: float, interval: float) -> list[LoadReported]:
        """The reports of the interval that ends at ``now``; starts the next one."""
        concurrency: dict[str, dict[str, float]] = {}
        requests: dict[str, int] = {}
        for slug, route in self._table.routes.items():
            count, route.requests = route.requests, 0
            values = {r.id: r.average_in_flight(now, interval) for r in route.replicas.values()}
            if route.shadow_version is not None:
                # Mirrored requests are no load of the endpoint's: they never scale it.
                for replica in route.replicas.values():
                    if replica.version == route.shadow_version:
                        values[replica.id] = 0.0
            if count or any(values.values()):
                concurrency[slug] = values
                requests[slug] = count
        retired: list[Replica] = []
        for replica in self._table.retired:
            average = replica.average_in_flight(now, interval)
            if average:
                concurrency.setdefault(replica.endpoint, {})[replica.id] = average
                requests.setdefault(replica.endpoint, 0)
            if replica.in_flight:
                retired.append(replica)
        self._table.retired = retired
        return [
            LoadReported(
                endpoint=slug,
                gateway=self._gateway_id,
                interval_s=interval,
                concurrency=values,
                requests=requests[slug],
            )
            for slug, values in concurrency.items()
        ]
