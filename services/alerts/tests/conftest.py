"""Fixtures of the alerts service's tests: the app on this test's NATS and database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from cormorant.alerts.app import create_app
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.servers import free_port


@pytest.fixture
def alerts_settings(tmp_path: Path, nats_url: str, database_url: str) -> AlertsSettings:
    """Settings of a test's alerts service; its flows' API is not running (exec-only flows)."""
    return AlertsSettings(
        data_dir=tmp_path / "data",
        nats_url=nats_url,
        database_url=database_url,
        log_json=False,
        flows_api_url=f"http://127.0.0.1:{free_port()}",
        flows_api_key="cmk_test",
    )


@pytest.fixture
async def alerts(alerts_settings: AlertsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the running app."""
    app = create_app(alerts_settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://alerts", timeout=60
        ) as client:
            yield client
