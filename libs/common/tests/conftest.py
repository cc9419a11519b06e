"""Fixtures of the common library's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cormorant.common.db import create_engine, upgrade


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database of this test's own, at the newest migration."""
    engine = create_engine(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()
