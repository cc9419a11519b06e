"""Fixtures of the gateway tests (helpers in ``gateway_testkit.py``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# --import-mode=importlib puts no test folder on sys.path: the helper module needs it.
sys.path.insert(0, str(Path(__file__).parent))

from gateway_testkit import Secrets, Worker, gateway_starter, make_secrets, run_workers


@pytest.fixture(scope="session")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    """Three real workers of endpoint ``demo``: r1 and r2 serve v1, r3 serves v2."""
    yield from run_workers(tmp_path_factory)


@pytest.fixture
async def credentials(database_url: str) -> Secrets:
    """A migrated database with endpoints demo, other, batchy, their tokens, an admin key."""
    return await make_secrets(database_url)


@pytest.fixture
def start_gateway(credentials: Secrets, nats_url: str) -> Callable[..., Any]:
    """An async context manager starting a gateway in front of a stand-in deployer."""
    return gateway_starter(credentials, nats_url)
