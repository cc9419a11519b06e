"""The deployer's half of the generation handshake: wait until every gateway routes by a
generation and no request is in flight to the versions about to stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from pydantic import ValidationError

from cormorant.common.handshake import GENERATION_SUBJECT, GenerationQuery, GenerationReport

log = logging.getLogger(__name__)

# How long the first answer may take, then how long a pause ends the gathering.
_FIRST_ANSWER_S = 0.5
_NEXT_ANSWER_S = 0.1
_RETRY_S = 0.05
# A gateway still behind after this long is sent the traffic event again.
_NUDGE_AFTER_S = 1.0


class GatewayHandshake:
    """Asks the gateways over core NATS which generation they apply (see ``common.handshake``)."""

    def __init__(self, nc: Client, *, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def ask(self, slug: str) -> list[GenerationReport]:
        """Every answering gateway's report on ``slug``."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        reports: list[GenerationReport] = []
        try:
            query = GenerationQuery(endpoint=slug).model_dump_json().encode()
            await self.nc.publish(GENERATION_SUBJECT, query, reply=inbox)
            wait = _FIRST_ANSWER_S
            while True:
                try:
                    msg = await sub.next_msg(timeout=wait)
                except NatsTimeout:
                    break
                try:
                    reports.append(GenerationReport.model_validate_json(msg.data))
                except ValidationError as exc:
                    log.warning("ignoring a gateway's generation report: %s", exc)
                wait = _NEXT_ANSWER_S
        finally:
            await sub.unsubscribe()
        return reports

    async def wait(
        self,
        slug: str,
        generation: int,
        versions: Collection[str],
        *,
        nudge: Callable[[], None] | None = None,
    ) -> bool:
        """True once every gateway applied ``generation`` of ``slug`` (or later) and has no
        request in flight to ``versions``; False after the timeout."""
        started = time.monotonic()
        nudged = False
        while True:
            reports = await self.ask(slug)
            behind = [r for r in reports if 0 <= r.generation < generation]
            busy = [r for r in reports if any(r.in_flight.get(v, 0) for v in versions)]
            if not behind and not busy:
                return True
            elapsed = time.monotonic() - started
            if behind and nudge is not None and not nudged and elapsed > _NUDGE_AFTER_S:
                # The traffic event may have been lost to a reconnect: send it once more.
                nudge()
                nudged = True
            if elapsed > self.timeout_s:
                log.warning(
                    "%s: gateways %s did not confirm generation %d with versions %s drained "
                    "within %g s; stopping those replicas anyway",
                    slug,
                    ", ".join(r.gateway for r in behind + busy),
                    generation,
                    ", ".join(versions),
                    self.timeout_s,
                )
                return False
            await asyncio.sleep(_RETRY_S)
