"""The predictions stream read back in tests, as predictlog reads it."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg

from cormorant.common.bus import PREDICTIONS_STREAM, decode_all
from cormorant.common.events import Event, PredictionLogged


async def read_logged(
    nats_url: str, expected: int, *, exactly: bool = True, within: float = 30.0
) -> list[PredictionLogged]:
    """The first ``expected`` PredictionLogged events of the stream (packs unpacked), failing
    if they do not come within ``within`` seconds, if anything else comes, or (``exactly``)
    if there are more."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(
            PredictionLogged.subject_filter(), stream=PREDICTIONS_STREAM
        )
        events: list[Event] = []
        async with asyncio.timeout(within):
            while len(events) < expected:
                messages: list[Msg] = await sub.fetch(1, timeout=within)
                events += decode_all(messages[0].data, messages[0].headers)
        if exactly:
            try:
                extra = await sub.fetch(1, timeout=0.3)
            except TimeoutError:  # nats' own, or asyncio's that fetch raises on some paths
                extra = []
            assert not extra, f"more events than expected: {[m.data for m in extra]}"
            assert len(events) == expected, f"{len(events)} events, expected {expected}"
    finally:
        await nc.close()
    logged = [event for event in events if isinstance(event, PredictionLogged)]
    assert len(logged) == len(events), f"not all PredictionLogged: {events}"
    return logged
