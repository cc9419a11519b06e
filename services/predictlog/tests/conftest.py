"""Fixtures of the PredictLog tests: a migrated database with an endpoint, the service run
in-process or as a real process (helpers in ``cormorant.predictlog.testing``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cormorant.predictlog.settings import PredictLogSettings
from cormorant.predictlog.testing import LogKit, ServiceProcess, quick_settings, running


@pytest.fixture
def kit(nats_url: str, migrated_url: str, endpoint_id: uuid.UUID) -> LogKit:
    """Helpers bound to this test's NATS, database and endpoint."""
    return LogKit(nats_url, migrated_url, endpoint_id)


@pytest.fixture
def settings(nats_url: str, migrated_url: str) -> PredictLogSettings:
    """The service's settings for this test's servers."""
    return quick_settings(nats_url, migrated_url)


@pytest.fixture
async def client(
    settings: PredictLogSettings, endpoint_id: uuid.UUID
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the service running in-process (ingest included)."""
    async with running(settings) as http:
        yield http


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str, str], ServiceProcess]]:
    """Makes ``ServiceProcess``es; every one is stopped at the end of the test."""
    made: list[ServiceProcess] = []

    def make(nats_url: str, database_url: str) -> ServiceProcess:
        service = ServiceProcess(nats_url, database_url, tmp_path / f"predictlog-{len(made)}.log")
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()
