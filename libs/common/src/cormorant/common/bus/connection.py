"""Connecting to NATS: reconnect forever, log connection changes, close cleanly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import nats
from nats.aio.client import Client

from cormorant.common.bus._support import Throttled

log = logging.getLogger(__name__)


async def connect(
    url: str | Sequence[str],
    *,
    name: str,
    reconnect_time_wait: float = 0.5,
    connect_timeout: float = 2.0,
    **opts: Any,
) -> Client:
    """Connect to NATS as ``name``, reconnecting forever and logging every connection change.

    The first connection also waits for the server for as long as it takes (nats-py retries
    it with ``max_reconnect_attempts=-1``): bound it with ``asyncio.timeout`` where needed.
    ``opts`` go to ``nats.connect`` and override these defaults.
    """
    error_log = Throttled(log, logging.WARNING)

    async def on_error(exc: Exception) -> None:
        error_log("nats %r: %s: %s", name, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        log.warning("nats %r: disconnected, reconnecting", name)

    async def on_reconnected() -> None:
        log.info("nats %r: reconnected", name)

    async def on_closed() -> None:
        log.info("nats %r: connection closed", name)

    options: dict[str, Any] = {
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_time_wait,
        "connect_timeout": connect_timeout,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
    }
    options.update(opts)
    servers = url if isinstance(url, str) else list(url)
    return await nats.connect(servers, **options)


async def close(nc: Client) -> None:
    """Close ``nc``, also while it is waiting to reconnect."""
    if nc.is_closed:
        return
    if not nc.is_connected:
        # Whatever was buffered for a reconnect can no longer be sent; nats-py would write it
        # to the dead transport and fail half-way through closing, leaving its tasks behind.
        nc._pending = []
        nc._pending_data_size = 0
    try:
        await nc.close()
    except OSError as exc:
        log.warning("nats connection closed uncleanly: %s", exc)
